"""Shared command-line plumbing for the ``jobs.*`` entry points.

Every job parses the same way: ``--config file.yaml`` (optional), then ``key.sub=value`` dotted
overrides, then ``--key.sub value`` flags generated from the config dataclass (so ``--help`` lists
every field with its type, default and help text). Values are parsed as YAML scalars/flow
collections, so ``--storage-options '{"anon": true}'`` and ``num_workers=4`` both work.

Names are shared across jobs: ``--out`` is the output of every job that writes one, and a dataset is
``--dataset.format/--dataset.root/--dataset.split/--dataset.name`` (:class:`DatasetConfig`).
Renamed keys have no aliases; the old name fails with a problem naming the new one
(:data:`RENAMED_KEYS`, e.g. ``--output was renamed --out``).

The result is a typed, frozen config dataclass. All problems (unknown keys, wrong types, failed
``__post_init__`` checks of any nested config) are collected and raised once as :class:`ConfigError`,
so a user fixes a bad command line in one go instead of one error per run.

Config dataclasses follow two conventions:

* a field's ``metadata={"help": "..."}`` is its ``--help`` text;
* it derives from ``Validated`` and ``problems()`` lists the problems of its own fields
  (:mod:`vrshq.validation`); making it raises them, and those of nested configs, in one ``ConfigError``.

Example::

    @dataclass(frozen=True)
    class MyConfig(Validated):
        out: str = field(metadata={"help": "output URI"})
        every: int = field(default=10, metadata={"help": "log a line every N videos"})

        def problems(self) -> list[str]:
            return [] if self.every >= 1 else [f"every={self.every}: must be >= 1"]

    cfg = parse_config(MyConfig, ["--out", "/tmp/x", "every=5"], prog="jobs.my", description="...")
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import sys
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import yaml

# One dataset spec for every job; it lives in pipelines/ (which must not import jobs/) so that
# InferenceConfig can nest the same DatasetConfig that evaluate/report/export use. One error type and one
# validator for every config: vrshq.validation.
from pipelines.inference.config import DatasetConfig, read_dataset
from vrshq.validation import ConfigError, range_problems, validate

__all__ = [
    "ConfigError",
    "DatasetConfig",
    "RENAMED_KEYS",
    "build_config",
    "code_version",
    "config_to_dict",
    "new_run_id",
    "init_ray",
    "parse_config",
    "parse_job_config",
    "range_problems",
    "read_dataset",
    "setup_logging",
    "log_config",
    "validate",
]

T = TypeVar("T")
_LOG = logging.getLogger("jobs")


def setup_logging(level: int = logging.INFO) -> None:
    """Log to stderr with timestamps (what ``ray job logs`` shows); idempotent."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(
            level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
        )
    root.setLevel(level)


def config_to_dict(config: Any) -> dict[str, Any]:
    """A plain (YAML-dumpable) dict of a config dataclass; tuples become lists."""

    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, Mapping):
            return {str(k): plain(v) for k, v in value.items()}
        return value

    return plain(config)


def log_config(config: Any, *, logger: logging.Logger = _LOG, secret_keys: Sequence[str] = ()) -> None:
    """Log the resolved config as YAML, with values under ``secret_keys`` (any depth) masked."""
    secrets = {k.lower() for k in ("key", "secret", "token", "password", *secret_keys)}

    def mask(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: ("***" if k.lower() in secrets else mask(v)) for k, v in value.items()}
        if isinstance(value, list):
            return [mask(v) for v in value]
        return value

    text = yaml.safe_dump(mask(config_to_dict(config)), sort_keys=False).rstrip()
    logger.info("resolved config (%s):\n%s", type(config).__name__, text)


# --------------------------------------------------------------------------- typed construction


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str, problems: list[str]) -> Any:
    """Check/convert ``value`` to annotation ``tp``; on failure append a problem and return None."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        local: list[str] = []
        for candidate in inner:
            local = []
            result = _coerce(value, candidate, where, local)
            if not local:
                return result
        problems.extend(local if len(inner) == 1 else [f"{where}: {value!r} is not a {_type_name(tp)}"])
        return None
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            problems.append(f"{where}: expected a mapping of {tp.__name__} fields, got {value!r}")
            return None
        return _build(tp, value, where + ".", problems)
    if origin in (tuple, list, Sequence) or tp in (tuple, list):
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            # A single scalar is accepted as a one-item sequence (``--overlay v:e``).
            value = [value]
        item_tp = args[0] if args else Any
        items = [_coerce(v, item_tp, f"{where}[{i}]", problems) for i, v in enumerate(value)]
        return tuple(items)
    if origin in (dict, Mapping) or tp in (dict,):
        if not isinstance(value, Mapping):
            problems.append(f"{where}: expected a mapping (e.g. JSON '{{\"k\": \"v\"}}'), got {value!r}")
            return None
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        problems.append(f"{where}: expected true/false, got {value!r}")
        return None
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        problems.append(f"{where}: expected an integer, got {value!r}")
        return None
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                number = float(value)
            except ValueError:
                pass
            else:
                if math.isfinite(number):
                    return number
        problems.append(f"{where}: expected a number, got {value!r}")
        return None
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        problems.append(f"{where}: expected a string, got {value!r}")
        return None
    return value


def _fallback(fld: dataclasses.Field) -> Any:
    """A stand-in for a field whose value was bad, so the class's own checks still run."""
    if fld.default is not dataclasses.MISSING:
        return fld.default
    if fld.default_factory is not dataclasses.MISSING:
        try:
            return fld.default_factory()
        except Exception:  # noqa: BLE001 - e.g. a nested config whose defaults are incomplete
            return None
    return None


def _build(cls: type[T], data: Mapping[str, Any], prefix: str, problems: list[str]) -> T | None:
    """Build ``cls`` from ``data``; every problem (own and nested) is appended to ``problems``.

    Fields with bad values are replaced by their defaults before ``cls(...)`` is tried, so the
    class's ``__post_init__`` checks of the *other* fields are reported in the same run.
    """
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in data:
        if key not in fields:
            problems.append(f"unknown key {prefix}{key!s} (known: {', '.join(sorted(fields))})")
    kwargs: dict[str, Any] = {}
    before = len(problems)
    for name, fld in fields.items():
        start = len(problems)
        if name in data:
            kwargs[name] = _coerce(data[name], hints[name], prefix + name, problems)
        elif fld.default is dataclasses.MISSING and fld.default_factory is dataclasses.MISSING:
            if dataclasses.is_dataclass(hints[name]):
                kwargs[name] = _coerce({}, hints[name], prefix + name, problems)
            else:
                problems.append(f"missing required key {prefix}{name}")
        elif dataclasses.is_dataclass(hints[name]):
            kwargs[name] = _coerce({}, hints[name], prefix + name, problems)
        if len(problems) > start:
            kwargs[name] = _fallback(fld)
    failed = len(problems) > before
    try:
        config = cls(**kwargs)
    except ConfigError as exc:
        paths = (p if p.startswith(prefix) else f"{prefix}{p}" for p in exc.problems)
        problems.extend(p for p in paths if p not in problems)
        return None
    except (TypeError, ValueError, AttributeError) as exc:
        if not failed:  # otherwise a consequence of a problem already reported
            problems.append(f"{prefix.rstrip('.') or cls.__name__}: {exc}")
        return None
    return None if failed else config


def build_config(cls: type[T], data: Mapping[str, Any]) -> T:
    """Build config dataclass ``cls`` from a nested mapping, raising one :class:`ConfigError`."""
    problems: list[str] = []
    config = _build(cls, data, "", problems)
    if problems or config is None:
        raise ConfigError(problems or [f"could not build {cls.__name__}"])
    return config


# --------------------------------------------------------------------------- argv parsing


def _unwrap_optional(tp: Any) -> Any:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(inner) == 1:
            return inner[0]
    return tp


def _flat_fields(cls: type, prefix: str = "") -> list[tuple[str, Any, dataclasses.Field]]:
    hints = typing.get_type_hints(cls)
    out: list[tuple[str, Any, dataclasses.Field]] = []
    for fld in dataclasses.fields(cls):
        if not fld.init:
            continue
        tp = hints[fld.name]
        if dataclasses.is_dataclass(_unwrap_optional(tp)):
            out.extend(_flat_fields(_unwrap_optional(tp), prefix + fld.name + "."))
        else:
            out.append((prefix + fld.name, tp, fld))
    return out


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    node = data
    parts = dotted.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def _parse_value(text: str, tp: Any = None) -> Any:
    """YAML-parse a command-line value; string fields keep the raw text (``yes`` stays ``"yes"``)."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if tp is str or (typing.get_origin(tp) in (typing.Union, types.UnionType) and args == [str]):
        return None if text in ("null", "~") and args == [str] else text
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _default_text(fld: dataclasses.Field) -> str:
    if fld.default is not dataclasses.MISSING:
        return repr(fld.default)
    if fld.default_factory is not dataclasses.MISSING:
        return repr(fld.default_factory())
    return "required"


#: Keys renamed so that every job names the same thing the same way (old dotted key -> new one).
#: There are no aliases: an old name fails with a problem that names the new one, whether it comes
#: as a flag (``--output``), an override (``output=...``) or a ``--config`` file key. A rename
#: applies to a job only where the old key is not one of its fields and the new one is, so
#: ``jobs.report`` keeps its own ``--split`` and ``jobs.train`` its ``--data.*``/``--storage-path``.
RENAMED_KEYS: dict[str, str] = {
    "output": "out",  # jobs.infer's --output: --out as in evaluate, report, export
    # jobs.infer's flat --dataset NAME --root URI --split S: the nested dataset spec of every job
    "dataset": "dataset.format",
    "root": "dataset.root",
    "split": "dataset.split",
}


def _flag(dotted: str) -> str:
    return "--" + dotted.replace("_", "-")


def _renamed_problem(old: str, new: str, *, as_flag: bool) -> str:
    return f"{_flag(old)} was renamed {_flag(new)}" if as_flag else f"key {old} was renamed {new}"


def _pull_renamed_flags(
    argv: list[str], renames: Mapping[str, str], problems: list[str]
) -> tuple[list[str], list[tuple[str, str]]]:
    """``argv`` without the renamed flags (and their values), and the (new key, value) pairs they gave."""
    by_flag = {_flag(old): (old, new) for old, new in renames.items()}
    kept: list[str] = []
    given: list[tuple[str, str]] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        if token == "--":  # the rest is positional
            kept.extend(argv[i:])
            break
        name, eq, value = token.partition("=")
        if name not in by_flag:
            kept.append(token)
            i += 1
            continue
        old, new = by_flag[name]
        problem = _renamed_problem(old, new, as_flag=True)
        if problem not in problems:
            problems.append(problem)
        if not eq and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            value, eq = argv[i + 1], "="
            i += 1
        if eq:
            given.append((new, value))
        i += 1
    return kept, given


def _is_old_use(old: str, value: Any, renames: Mapping[str, str]) -> bool:
    """Whether ``old=value`` uses a renamed key: ``dataset: revos`` does; ``dataset: {root: ...}`` and
    ``dataset=null`` (the nested spec that took the name over, or no dataset) do not."""
    if old not in renames or isinstance(value, Mapping):
        return False
    return not (value is None and renames[old].startswith(old + "."))


def _rename_keys(data: dict[str, Any], renames: Mapping[str, str], problems: list[str]) -> None:
    """Move values under renamed top-level keys (``--config`` files) to the new key; one problem each."""
    for old, new in renames.items():
        if old in data and _is_old_use(old, data[old], renames):
            value = data.pop(old)
            _set_dotted(data, new, value)
            problem = _renamed_problem(old, new, as_flag=False)
            if problem not in problems:
                problems.append(problem)


def parse_config(
    cls: type[T],
    argv: Sequence[str] | None,
    *,
    prog: str,
    description: str,
    epilog: str | None = None,
) -> T:
    """Parse ``argv`` into config dataclass ``cls`` (``--help`` exits with status 0).

    Precedence: config file < ``key=value`` overrides < ``--key value`` flags.

    Raises:
        ConfigError: listing every problem (unknown key, bad type, failed validation, unreadable
            config file, a renamed key given by its old name: see :data:`RENAMED_KEYS`).
    """
    flat = _flat_fields(cls)
    leaves = {dotted for dotted, _, _ in flat}
    renames = {old: new for old, new in RENAMED_KEYS.items() if old not in leaves and new in leaves}
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", metavar="FILE.yaml", help="YAML file of config values (optional)")
    parser.add_argument(
        "overrides", nargs="*", metavar="key.sub=value", help="dotted overrides, YAML-parsed values"
    )
    for dotted, tp, fld in flat:
        flag = "--" + dotted.replace("_", "-")
        help_text = f"{fld.metadata.get('help', '')} [{_type_name(tp)}; default: {_default_text(fld)}]"
        dest = "field:" + dotted
        if tp is bool:
            parser.add_argument(flag, dest=dest, action="store_const", const="true", help=help_text)
            parser.add_argument("--no-" + dotted.replace("_", "-"), dest=dest, action="store_const",
                                const="false", help=argparse.SUPPRESS)
        elif typing.get_origin(tp) in (tuple, list):
            parser.add_argument(flag, dest=dest, action="append", metavar="VALUE", help=help_text + " (repeatable)")
        else:
            parser.add_argument(flag, dest=dest, metavar="VALUE", help=help_text)
    renamed: list[str] = []  # old names used: the run fails, but the rest is still checked
    argv_list, renamed_flag_values = _pull_renamed_flags(
        list(sys.argv[1:] if argv is None else argv), renames, renamed)
    args = parser.parse_args(argv_list)

    problems: list[str] = []
    data: dict[str, Any] = {}
    if args.config:
        try:
            import fsspec

            with fsspec.open(args.config, "r") as handle:
                loaded = yaml.safe_load(handle) or {}
            if not isinstance(loaded, dict):
                problems.append(f"--config {args.config}: expected a YAML mapping, got {type(loaded).__name__}")
            else:
                data = loaded
                _rename_keys(data, renames, renamed)
        except (OSError, yaml.YAMLError) as exc:
            problems.append(f"--config {args.config}: cannot read: {exc}")
    types_by_key = {dotted: tp for dotted, tp, _ in flat}
    for override in args.overrides:
        key, sep, value = override.partition("=")
        key = key.strip()
        if not sep or not key:
            problems.append(f"override {override!r} is not of the form key.sub=value")
            continue
        parsed_value = _parse_value(value, types_by_key.get(key))
        if _is_old_use(key, parsed_value, renames):
            problem = _renamed_problem(key, renames[key], as_flag=False)
            if problem not in renamed:
                renamed.append(problem)
            key = renames[key]
            parsed_value = _parse_value(value, types_by_key.get(key))
        _set_dotted(data, key, parsed_value)
    for key, value in renamed_flag_values:  # below the flags of the new names, if both were given
        _set_dotted(data, key, _parse_value(value, types_by_key.get(key)))
    for dotted, tp, _ in flat:
        value = getattr(args, "field:" + dotted)
        if value is None:
            continue
        if isinstance(value, list):
            item_tp = (typing.get_args(tp) or (Any,))[0]
            parsed: Any = [_parse_value(v, item_tp) for v in value]
            if len(parsed) == 1 and isinstance(parsed[0], list):  # one flag holding a whole list: --x "[0, 1]"
                parsed = parsed[0]
        else:
            parsed = _parse_value(value, tp)
        _set_dotted(data, dotted, parsed)
    if problems:
        raise ConfigError(renamed + problems)
    if renamed:
        # Checked as if the new names had been used, so one run lists everything left to fix.
        others: list[str] = []
        _build(cls, data, "", others)
        raise ConfigError(renamed + [p for p in others if p not in renamed])
    return build_config(cls, data)


def parse_job_config(cls: type[T], argv: Sequence[str] | None, *, module: str, doc: str | None) -> T:
    """:func:`parse_config` for the job ``python -m <module>``: its ``--help`` shows the first paragraph of the
    module docstring ``doc`` as the description and the rest as the epilog.

    Raises:
        ConfigError: as :func:`parse_config`.
    """
    description, _, epilog = (doc or "").partition("\n\n")
    return parse_config(cls, argv, prog=f"python -m {module}", description=description, epilog=epilog or None)


def code_version() -> str:
    """The git sha of the code (``<sha>-dirty`` with local changes), else the package version.

    Under ``ray job submit --working-dir .`` the uploaded copy may have no ``.git``; then the
    installed package version is the best provenance there is.
    """
    import pathlib
    import subprocess

    root = pathlib.Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        from importlib.metadata import version

        return "vrshq-" + version("vrshq")
    except Exception:  # noqa: BLE001 - provenance must never fail a job
        return "unknown"


def new_run_id(prefix: str) -> str:
    """``<prefix>-<UTC timestamp>-<6 hex>``: sortable and unique across concurrent jobs."""
    import datetime
    import uuid

    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return f"{prefix}-{stamp}-{uuid.uuid4().hex[:6]}"


def init_ray(address: str | None = None, *, include_dashboard: bool | None = None) -> None:
    """Connect to the Ray cluster (``ray job submit`` sets RAY_ADDRESS) or start a local one, with a console
    that shows what a user can act on (``jobs._ray_console``).

    A local cluster's processes end with this driver even if it is SIGKILLed: a reaper process
    (:mod:`pipelines.ray_reaper`) watches the driver and stops them by PID. ``include_dashboard=False``
    starts a local cluster without the dashboard (a dozen Python processes that a short run on a few
    cores pays for in start-up CPU); give it only when starting one, not when connecting.
    """
    import ray

    from jobs._ray_console import choose_local_auth_mode, drop_unactionable_ray_errors

    if not ray.is_initialized():
        choose_local_auth_mode(address)
        options = {} if include_dashboard is None else {"include_dashboard": include_dashboard}
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=True, **options)
        from pipelines.ray_reaper import local_ray_pids, start_reaper

        try:
            start_reaper(local_ray_pids())
        except Exception:  # noqa: BLE001 - cleanup insurance must never stop a job
            _LOG.warning("could not start the Ray reaper; a killed driver may leave Ray processes", exc_info=True)
        drop_unactionable_ray_errors()
