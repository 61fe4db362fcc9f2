"""Hypothesis strategies that break a valid ReVOS meta, mask dict or manifest, and remember what they broke.

A *mutation* is a small dict (``op`` plus its arguments) applied to a copy of a valid document. Each
one reports what it touched: the whole document (the job must exit 2), a video, or one
(video, expression) pair; everything it did not touch must come out of the job exactly as from the
clean dataset, and everything it did touch must either run or have an ``errors/`` row naming it.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from hypothesis import strategies as st

__all__ = ["Touched", "apply_manifest_mutations", "apply_meta_mutations", "manifest_mutations", "meta_mutations"]

DELETE = "<delete>"

#: Strings no id, name or text should turn into trouble: path tricks, control characters, huge ones.
HOSTILE_STRINGS = ["", " \t", "..", ".", "../x", "../../esc/v", "a/../../../esc/v", "/abs/outside", "a//b", "./a",
                   "a/", "x\x00y", "\x1b[31mred", "line\nbreak", "C:\\windows", "s3://other-bucket/x", "é/🐈‍⬛",
                   "\u202eevil", "a" * 5000]
WRONG_VALUES = [None, True, 1.5, -3, 0, 2**63, 10**30, "x", "12", [], {}, [None], ["1"], [1.5], [-1], [2**70],
                {"a": 1}]
#: Ids that name the bait folder beside the dataset root (``<root>/../esc/v``) if followed.
ESCAPES = ["../../esc/v", "a/../../../esc/v", "JPEGImages/../../../esc/v", "../../esc/v/"]
VIDEO_KEYS = ["frames", "expressions", "height", "width"]
EXP_KEYS = ["exp", "obj_id", "anno_id", "type_id"]


@dataclass
class Touched:
    """What a set of mutations touched."""

    document: bool = False  # the meta, mask dict or manifest as a whole: exit 2 expected
    videos: set[str] = field(default_factory=set)
    pairs: set[tuple[str, str]] = field(default_factory=set)
    anno_ids: set[str] = field(default_factory=set)

    def covers(self, video_id: str, exp_id: str, anno_ids: tuple[int, ...] = ()) -> bool:
        return (video_id in self.videos or (video_id, exp_id) in self.pairs
                or any(str(a) in self.anno_ids for a in anno_ids))


_values = st.sampled_from([DELETE, *HOSTILE_STRINGS, *WRONG_VALUES])


def meta_mutations(video_ids: list[str], exp_ids: dict[str, list[str]], anno_ids: list[str]) -> st.SearchStrategy:
    """1-3 mutations of a meta (and its mask dict) with these videos, expressions and annotations."""
    video = st.sampled_from(video_ids)

    @st.composite
    def one(draw) -> dict[str, Any]:
        kind = draw(st.sampled_from(["video_key", "exp_key", "exp_key", "rename_video", "rename_video", "frame_name",
                                     "frame_name", "dup_frame", "dup_video", "dup_exp", "rename_exp", "mask",
                                     "document"]))
        vid = draw(video)
        exp = draw(st.sampled_from(exp_ids[vid]))
        if kind == "video_key":
            return {"op": kind, "video": vid, "key": draw(st.sampled_from(VIDEO_KEYS)), "value": draw(_values)}
        if kind == "exp_key":
            return {"op": kind, "video": vid, "exp": exp, "key": draw(st.sampled_from(EXP_KEYS)),
                    "value": draw(_values)}
        if kind == "rename_video":
            new = draw(st.one_of(st.sampled_from(ESCAPES),
                                 st.sampled_from(HOSTILE_STRINGS + ["../" + vid, "/" + vid, vid + "/..", vid + "/",
                                                                    "copy/" + vid])))
            return {"op": kind, "video": vid, "new": new}
        if kind == "frame_name":
            return {"op": kind, "video": vid, "index": draw(st.integers(0, 2)),
                    "value": draw(st.one_of(st.sampled_from(["../" * k + "esc/v/00000" for k in (3, 4)]), _values))}
        if kind in ("dup_frame", "dup_video"):
            return {"op": kind, "video": vid}
        if kind == "dup_exp":
            return {"op": kind, "video": vid, "exp": exp}
        if kind == "rename_exp":
            return {"op": kind, "video": vid, "exp": exp, "new": draw(st.sampled_from(HOSTILE_STRINGS[:14]))}
        if kind == "mask":
            return {"op": kind, "anno": draw(st.sampled_from(anno_ids)),
                    "how": draw(st.sampled_from(["delete", "short", "long", "not a list", "garbage rle"]))}
        return {"op": kind, "how": draw(st.sampled_from(["no videos", "videos a list", "top-level list",
                                                         "mask dict a list"]))}

    return st.lists(one(), min_size=1, max_size=3)


def apply_meta_mutations(meta: dict, mask_dict: dict, mutations: list[dict]) -> tuple[Any, Any, Touched]:
    """The mutated (meta, mask dict) and what the mutations touched."""
    meta, mask_dict = copy.deepcopy(meta), copy.deepcopy(mask_dict)
    touched = Touched()
    for m in mutations:
        videos = meta.get("videos") if isinstance(meta, dict) else None
        op = m["op"]
        if op == "document":
            touched.document = True
            if m["how"] == "mask dict a list":
                mask_dict = list(mask_dict.items()) if isinstance(mask_dict, dict) else mask_dict
            elif m["how"] == "top-level list":
                meta = [meta]
            elif isinstance(meta, dict):
                if m["how"] == "no videos":
                    meta.pop("videos", None)
                else:
                    meta["videos"] = list(videos.items()) if isinstance(videos, dict) else [videos]
            continue
        if op == "mask":
            if not isinstance(mask_dict, dict) or m["anno"] not in mask_dict:
                continue
            touched.anno_ids.add(m["anno"])
            value = mask_dict[m["anno"]]
            if m["how"] == "delete":
                del mask_dict[m["anno"]]
            elif m["how"] == "short" and isinstance(value, list):
                mask_dict[m["anno"]] = value[:-1]
            elif m["how"] == "long" and isinstance(value, list):
                mask_dict[m["anno"]] = value + value[:1]
            elif m["how"] == "not a list":
                mask_dict[m["anno"]] = {"size": [1, 1], "counts": "0"}
            elif isinstance(value, list):
                mask_dict[m["anno"]] = [{"size": [32, 32], "counts": "!!!"}] + value[1:]
            continue
        if not isinstance(videos, dict) or m["video"] not in videos:
            continue
        vid = m["video"]
        entry = videos[vid]
        touched.videos.add(vid) if op in ("video_key", "frame_name", "dup_frame") else None
        if op == "video_key":
            _set(entry, m["key"], m["value"])
        elif op == "frame_name":
            frames = entry.get("frames") if isinstance(entry, dict) else None
            if isinstance(frames, list) and frames:
                frames[m["index"] % len(frames)] = m["value"] if m["value"] != DELETE else frames[0]
        elif op == "dup_frame":
            frames = entry.get("frames") if isinstance(entry, dict) else None
            if isinstance(frames, list) and frames:
                frames.append(frames[0])
        elif op == "rename_video":
            if m["new"] in videos:
                continue
            videos[m["new"]] = videos.pop(vid)
            touched.videos.update({vid, m["new"]})
        elif op == "dup_video":
            new = "copy/" + vid
            if new not in videos:
                videos[new] = copy.deepcopy(entry)
                touched.videos.add(new)  # reads the same frames under another id: valid, but not in the clean run
        else:
            expressions = entry.get("expressions") if isinstance(entry, dict) else None
            if not isinstance(expressions, dict) or m["exp"] not in expressions:
                continue
            if op == "exp_key":
                touched.pairs.add((vid, m["exp"]))
                if isinstance(expressions[m["exp"]], dict):
                    _set(expressions[m["exp"]], m["key"], m["value"])
            elif op == "dup_exp":
                new = m["exp"] + "-copy"
                expressions[new] = copy.deepcopy(expressions[m["exp"]])
                touched.pairs.add((vid, new))
            elif op == "rename_exp" and m["new"] not in expressions:
                expressions[m["new"]] = expressions.pop(m["exp"])
                touched.pairs.update({(vid, m["exp"]), (vid, m["new"])})
    return meta, mask_dict, touched


def _set(target: Any, key: str, value: Any) -> None:
    if not isinstance(target, dict):
        return
    if value == DELETE:
        target.pop(key, None)
    else:
        target[key] = copy.deepcopy(value)


# --------------------------------------------------------------------------- manifests

_MANIFEST_STRINGS = st.sampled_from(HOSTILE_STRINGS)
_ROW_FIELDS = {
    "video_id": _MANIFEST_STRINGS,
    "exp_id": _MANIFEST_STRINGS,
    "expression": _MANIFEST_STRINGS,
    "frames_uri": st.sampled_from(["<root>/../esc/v", "<root>/./x", "/abs/outside", "s3://b/a/../../c", "x\x00y", ""]),
    "frame_names": st.sampled_from([[], ["../../esc/v/00000"], ["/etc/passwd"], ["a", "a"], ["x\x00y"], [""],
                                    ["a" * 5000]]),
    "height": st.sampled_from([0, -1, 2**31 - 1, 1]),
    "width": st.sampled_from([0, -1, 2**31 - 1, 1]),
    "type_id": st.sampled_from([-1, 3, 7, 127]),
    "obj_ids": st.sampled_from([[], [-1], [2**62]]),
    "anno_ids": st.sampled_from([[987654], [-1], [2**62]]),
    "annotation_uri": st.sampled_from(["<root>/../mask_dict.json", "<root>/missing.json"]),
}


def manifest_mutations(num_rows: int) -> st.SearchStrategy:
    """1-3 mutations of manifest rows: a field set to a hostile value, a row duplicated, or a schema break."""
    row_edit = st.fixed_dictionaries({
        "op": st.just("field"), "row": st.integers(0, num_rows - 1),
        "field": st.sampled_from(sorted(_ROW_FIELDS)),
    }).flatmap(lambda m: st.fixed_dictionaries({**{k: st.just(v) for k, v in m.items()},
                                                "value": _ROW_FIELDS[m["field"]]}))
    duplicate = st.fixed_dictionaries({"op": st.just("duplicate"), "row": st.integers(0, num_rows - 1)})
    schema = st.fixed_dictionaries({"op": st.just("schema"),
                                    "how": st.sampled_from(["drop column", "null exp_id", "extra column"])})
    return st.lists(st.one_of(row_edit, row_edit, duplicate, schema), min_size=1, max_size=3)


def apply_manifest_mutations(rows: list[dict], mutations: list[dict], *, root: str) -> tuple[list[dict], Touched, set]:
    """The mutated rows, what was touched, and the schema breaks asked for (they make the file unreadable)."""
    rows = copy.deepcopy(rows)
    touched = Touched()
    breaks = set()
    video_fields = {"frames_uri", "frame_names", "height", "width", "annotation_uri", "video_id"}
    for m in mutations:
        if m["op"] == "schema":
            breaks.add(m["how"])
            touched.document = True
            continue
        row = rows[m["row"]]
        if m["op"] == "duplicate":
            rows.append(dict(row))
            touched.pairs.add((row["video_id"], row["exp_id"]))
            continue
        value = m["value"]
        if isinstance(value, str):
            value = value.replace("<root>", root)
        if m["field"] in video_fields:
            touched.videos.add(row["video_id"])
        touched.pairs.add((row["video_id"], row["exp_id"]))
        row[m["field"]] = value
        touched.pairs.add((row["video_id"], row["exp_id"]))
        if m["field"] in video_fields:
            touched.videos.add(row["video_id"])
    return rows, touched, breaks
