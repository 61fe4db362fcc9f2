"""Dataset-level scores from per-expression scores: ReVOS splits and the plain MeViS/DAVIS mean.

Input is a ``pyarrow.Table`` with one row per expression, as written under
``schemas.SCORES_SCHEMA``: float columns ``j`` and ``f`` (required), ``accuracy`` and
``robustness`` (optional), and for ReVOS the integer column ``type_id``. Values are fractions in
[0, 1]; the official scripts print percentages.

ReVOS (``tools/eval_revos.py``): each split's J, F, A, R is the mean over its expressions
(``type_id`` 0 = referring, 1 = reasoning), its J&F is ``(J + F) / 2``, and **overall** is the
plain mean of the referring and reasoning numbers, not a mean pooled over all their expressions.
``type_id`` 2 (no target) is excluded. Unlike the script, per-expression values are not rounded to
two decimals of a percent before averaging (a difference below 0.005 points).

MeViS ``valid_u`` and Ref-DAVIS17 (``tools/eval_mevis.py``, ``tools/eval_davis17.py``): J and F are
means over all expressions and J&F is ``(J + F) / 2``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["SplitScores", "RevosSummary", "summarize_revos", "summarize_mean"]

#: ReVOS ``type_id`` of referring and reasoning expressions (type 2, no target, is excluded).
REFERRING_TYPE_ID = 0
REASONING_TYPE_ID = 1
_KNOWN_TYPE_IDS = (0, 1, 2)


@dataclass(frozen=True)
class SplitScores:
    """Mean scores of a set of expressions.

    Attributes:
        num_expressions: expressions averaged (for ReVOS ``overall``: referring + reasoning).
        j, f: mean region similarity and boundary F-measure.
        jf: ``(j + f) / 2``.
        accuracy: mean ReVOS accuracy A over the rows that have one; None if no row has one.
        robustness: mean ReVOS robustness R over the rows that have one (rows without foreground
            have none); None if no row has one.
    """

    num_expressions: int
    j: float
    f: float
    jf: float
    accuracy: float | None = None
    robustness: float | None = None


@dataclass(frozen=True)
class RevosSummary:
    """ReVOS results: per split, and overall = plain mean of the two splits."""

    referring: SplitScores
    reasoning: SplitScores
    overall: SplitScores

    def as_dict(self) -> dict[str, dict[str, Any]]:
        """``{"referring": {...}, "reasoning": {...}, "overall": {...}}``, e.g. for a JSON report."""
        return {name: asdict(getattr(self, name)) for name in ("referring", "reasoning", "overall")}


def summarize_mean(scores: pa.Table) -> SplitScores:
    """MeViS / Ref-DAVIS style summary: means over all rows of ``scores``.

    Args:
        scores: table with float columns ``j``, ``f`` and optionally ``accuracy``, ``robustness``.

    Returns:
        :class:`SplitScores` over every row.

    Raises:
        TypeError: ``scores`` is not a ``pyarrow.Table`` or a column is not numeric.
        ValueError: a required column is missing, ``j``/``f`` has nulls, or the table is empty.

    Example:
        >>> import pyarrow as pa
        >>> summarize_mean(pa.table({"j": [0.5, 0.7], "f": [0.6, 1.0]}))
        SplitScores(num_expressions=2, j=0.6, f=0.8, jf=0.7, accuracy=None, robustness=None)
    """
    columns = _columns(scores, need_type_id=False)
    return _split_scores(columns, np.ones(scores.num_rows, dtype=bool), name="all rows")


def summarize_revos(scores: pa.Table) -> RevosSummary:
    """ReVOS summary: referring (type 0), reasoning (type 1), overall = mean of the two.

    Args:
        scores: table with an integer column ``type_id`` and float columns ``j``, ``f``,
            optionally ``accuracy`` and ``robustness``. Rows of type 2 are ignored (their
            scores may be null).

    Returns:
        :class:`RevosSummary`.

    Raises:
        TypeError: ``scores`` is not a ``pyarrow.Table`` or a column is not numeric.
        ValueError: a required column is missing, a type_id is not 0, 1 or 2, a split has no
            rows, or ``j``/``f`` of a referring or reasoning row is null.

    Example:
        >>> import pyarrow as pa
        >>> table = pa.table({"type_id": [0, 0, 1, 2], "j": [0.2, 0.4, 0.8, 0.0], "f": [0.4, 0.6, 1.0, 0.0]})
        >>> summary = summarize_revos(table)
        >>> summary.overall.j, summary.overall.f, summary.overall.num_expressions  # (0.3 + 0.8)/2, (0.5 + 1)/2
        (0.55, 0.75, 3)
    """
    columns = _columns(scores, need_type_id=True)
    type_id = columns.pop("type_id")
    missing = np.isnan(type_id)
    unknown = sorted(set(np.unique(type_id[~missing]).tolist()) - set(_KNOWN_TYPE_IDS))
    if unknown or missing.any():
        found = [int(v) if float(v).is_integer() else v for v in unknown] + (["null"] if missing.any() else [])
        raise ValueError(f"type_id must be 0 (referring), 1 (reasoning) or 2 (no target), found {found}")
    referring = _split_scores(columns, type_id == REFERRING_TYPE_ID, name="referring (type_id 0)")
    reasoning = _split_scores(columns, type_id == REASONING_TYPE_ID, name="reasoning (type_id 1)")
    overall = SplitScores(
        num_expressions=referring.num_expressions + reasoning.num_expressions,
        j=(referring.j + reasoning.j) / 2,
        f=(referring.f + reasoning.f) / 2,
        jf=(referring.jf + reasoning.jf) / 2,
        accuracy=_mean_of_two(referring.accuracy, reasoning.accuracy),
        robustness=_mean_of_two(referring.robustness, reasoning.robustness),
    )
    return RevosSummary(referring=referring, reasoning=reasoning, overall=overall)


def _columns(scores: Any, *, need_type_id: bool) -> dict[str, np.ndarray]:
    """The used columns of ``scores`` as float64 arrays (null -> NaN); optional ones only if present."""
    import pyarrow as pa

    if not isinstance(scores, pa.Table):
        hint = " (convert with pyarrow.Table.from_pandas(df))" if type(scores).__name__ == "DataFrame" else ""
        raise TypeError(f"scores must be a pyarrow.Table with columns j, f, ...; got {type(scores).__name__}{hint}")
    required = ("type_id", "j", "f") if need_type_id else ("j", "f")
    missing = [name for name in required if name not in scores.column_names]
    if missing:
        raise ValueError(f"scores lacks column(s) {missing}; it has {scores.column_names}")
    columns = {}
    for name in (*required, "accuracy", "robustness"):
        if name not in scores.column_names:
            continue
        column = scores.column(name)
        if not (pa.types.is_floating(column.type) or pa.types.is_integer(column.type)):
            raise TypeError(f"column {name!r} must be numeric, got {column.type}")
        columns[name] = column.to_numpy(zero_copy_only=False).astype(np.float64)
    return columns


def _split_scores(columns: dict[str, np.ndarray], rows: np.ndarray, *, name: str) -> SplitScores:
    count = int(np.count_nonzero(rows))
    if count == 0:
        raise ValueError(f"no expression in {name}; cannot average an empty split")
    j, f = columns["j"][rows], columns["f"][rows]
    for column, values in (("j", j), ("f", f)):
        if np.isnan(values).any():
            raise ValueError(
                f"{int(np.isnan(values).sum())} row(s) of {name} have a null/NaN {column!r}; "
                "score them or filter them out first"
            )
    j_mean, f_mean = float(np.mean(j)), float(np.mean(f))
    return SplitScores(
        num_expressions=count,
        j=j_mean,
        f=f_mean,
        jf=(j_mean + f_mean) / 2,
        accuracy=_nan_mean(columns.get("accuracy"), rows),
        robustness=_nan_mean(columns.get("robustness"), rows),
    )


def _nan_mean(values: np.ndarray | None, rows: np.ndarray) -> float | None:
    """Mean of the non-null values of ``values[rows]``; None if there are none."""
    if values is None:
        return None
    present = values[rows]
    present = present[~np.isnan(present)]
    return float(np.mean(present)) if present.size else None


def _mean_of_two(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else (a + b) / 2
