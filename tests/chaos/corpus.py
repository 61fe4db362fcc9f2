"""Seeded generators of hostile inputs for the chaos suite (no hypothesis: a fixed corpus is
reproducible byte for byte and its size is known, so FIGURES.md can state it)."""
from __future__ import annotations

import io
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

__all__ = ["Case", "corrupt_bytes", "image_mode_cases", "jpeg_bytes", "meta_cases", "rle_cases"]

SEED = 20250601


@dataclass(frozen=True)
class Case:
    """One generated input: a name (shown by pytest), the payload, and what the reader must do."""

    name: str
    payload: Any
    must_fail: bool  # True: DataError required; False: DataError *or* a valid result


def jpeg_bytes(height: int = 24, width: int = 32, *, seed: int = 0, quality: int = 90) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def corrupt_bytes(data: bytes, count: int, *, seed: int) -> Iterator[Case]:
    """``count`` truncations (strictly shorter, so a decoder must notice) and bit-flipped copies."""
    rng = random.Random(seed)
    for i in range(count):
        if i % 2 == 0:
            cut = rng.randrange(0, len(data) - 2)  # never a whole file: the EOI marker/moov atom is lost
            yield Case(f"truncated-{cut}of{len(data)}", data[:cut], must_fail=cut < len(data) // 2)
        else:
            flipped = bytearray(data)
            for _ in range(rng.randint(1, 16)):
                pos = rng.randrange(len(flipped))
                flipped[pos] ^= 1 << rng.randrange(8)
            yield Case(f"bitflip-{i}", bytes(flipped), must_fail=False)


def image_mode_cases() -> Iterator[Case]:
    """Grayscale, CMYK, 16-bit, palette, alpha and 1-bit images in JPEG/PNG/TIFF: all must decode to RGB."""
    rng = np.random.default_rng(SEED)
    rgb = Image.fromarray(rng.integers(0, 256, (20, 28, 3), dtype=np.uint8))
    for mode, formats in (("L", ("JPEG", "PNG")), ("CMYK", ("JPEG", "TIFF")), ("P", ("PNG",)),
                          ("RGBA", ("PNG",)), ("LA", ("PNG",)), ("1", ("PNG",)), ("I;16", ("PNG", "TIFF")),
                          ("I", ("TIFF",)), ("F", ("TIFF",)), ("YCbCr", ("JPEG",))):
        if mode == "I;16":
            image = Image.fromarray(rng.integers(0, 65536, (20, 28), dtype=np.uint16))
        elif mode == "I":
            image = Image.fromarray(rng.integers(0, 65536, (20, 28)).astype(np.int32))
        elif mode == "F":
            image = Image.fromarray(rng.uniform(0, 300, (20, 28)).astype(np.float32))
        else:
            image = rgb.convert(mode)
        for fmt in formats:
            buffer = io.BytesIO()
            image.save(buffer, fmt)
            yield Case(f"mode-{mode}-{fmt}", buffer.getvalue(), must_fail=False)


def _good_meta() -> dict[str, Any]:
    return {"videos": {"vid/a": {"frames": ["00000", "00001", "00002"], "expressions": {
        "0": {"exp": "the red cat", "obj_id": [1], "anno_id": [10], "type_id": 0},
        "1": {"exp": "what moves fastest?", "obj_id": [2], "anno_id": [11], "type_id": 1}}}}}


def meta_cases(count: int) -> Iterator[Case]:
    """Malformed ``meta_expressions*.json`` documents (each must fail) and a few hostile-but-valid ones."""
    rng = random.Random(SEED + 1)
    wrong_values = [None, 1.5, True, "x", [], {}, [None], ["a"], -3, [1.5]]
    mutations = []
    for key in ("frames", "expressions"):
        mutations.append((f"video-missing-{key}", lambda m, k=key: m["videos"]["vid/a"].pop(k)))
    for key in ("exp", "type_id"):
        mutations.append((f"exp-missing-{key}", lambda m, k=key: m["videos"]["vid/a"]["expressions"]["0"].pop(k)))
    for key in ("exp", "obj_id", "anno_id", "type_id"):
        for j, value in enumerate(wrong_values):
            if key in ("obj_id", "anno_id") and value in ([],):
                continue  # an empty id list is valid (no-target expressions)
            if key in ("obj_id", "anno_id") and isinstance(value, int) and not isinstance(value, bool):
                continue  # a bare int id is accepted (Ref-YouTube-VOS style); an unknown one fails at mask time
            if key == "exp" and isinstance(value, str):
                continue  # any non-empty string is an expression
            mutations.append((f"exp-{key}-wrongtype{j}",
                              lambda m, k=key, v=value: m["videos"]["vid/a"]["expressions"]["0"].__setitem__(k, v)))
    for key in ("frames", "height", "width", "expressions"):
        for j, value in enumerate(wrong_values):
            if key in ("height", "width") and value is None:
                continue  # unknown size is allowed
            if (key == "frames" and value == ["a"]) or (key == "expressions" and value == {}):
                continue  # valid: a one-frame video, a video without expressions
            mutations.append((f"video-{key}-wrongtype{j}",
                              lambda m, k=key, v=value: m["videos"]["vid/a"].__setitem__(k, v)))
    mutations += [
        ("exp-empty-text", lambda m: m["videos"]["vid/a"]["expressions"]["0"].__setitem__("exp", "")),
        ("exp-blank-text", lambda m: m["videos"]["vid/a"]["expressions"]["0"].__setitem__("exp", " \t\n")),
        ("frames-empty", lambda m: m["videos"]["vid/a"].__setitem__("frames", [])),
        ("frames-duplicate", lambda m: m["videos"]["vid/a"].__setitem__("frames", ["00000", "00000"])),
        ("videos-not-object", lambda m: m.__setitem__("videos", [1, 2])),
        ("no-videos", lambda m: m.pop("videos")),
        ("video-not-object", lambda m: m["videos"].__setitem__("vid/a", "oops")),
        ("exp-not-object", lambda m: m["videos"]["vid/a"]["expressions"].__setitem__("0", ["exp"])),
        ("type-id-unknown", lambda m: m["videos"]["vid/a"]["expressions"]["0"].__setitem__("type_id", 7)),
    ]
    for i in range(count):
        name, mutate = mutations[i % len(mutations)]
        meta = _good_meta()
        # a random second video, valid, so one bad entry must still fail the whole file with its name
        if rng.random() < 0.5:
            meta["videos"]["zz"] = {"frames": ["f0"], "expressions": {"9": {"exp": "x", "obj_id": [], "anno_id": [],
                                                                          "type_id": 2}}}
        mutate(meta)
        yield Case(f"meta-{name}-{i}", json.loads(json.dumps(meta)), must_fail=True)
    # hostile but valid: a 10k-character expression, odd unicode, ids with odd characters
    for i, text in enumerate(["x" * 10_000, "🐈‍⬛ " * 500, "a\u0000b", "<script>alert(1)</script>", "' OR 1=1 --"]):
        meta = _good_meta()
        meta["videos"]["vid/a"]["expressions"]["0"]["exp"] = text
        yield Case(f"meta-valid-hostile-text-{i}", meta, must_fail=False)


def rle_cases(count: int, *, height: int = 12, width: int = 16) -> Iterator[Case]:
    """RLEs that disagree with a ``height`` x ``width`` frame (size, counts sum, types)."""
    from pycocotools import mask as mask_utils

    rng = random.Random(SEED + 2)
    for i in range(count):
        kind = i % 6
        if kind == 0:  # size disagrees
            h, w = rng.choice([(height + 1, width), (height, width - 1), (width, height), (1, 1)])
            m = np.asfortranarray(np.zeros((h, w), dtype=np.uint8))
            rle = mask_utils.encode(m)
            payload = {"size": [h, w], "counts": rle["counts"].decode()}
        elif kind == 1:  # compressed counts for another size, size field lying
            m = np.asfortranarray(np.ones((height + rng.randint(1, 5), width), dtype=np.uint8))
            payload = {"size": [height, width], "counts": mask_utils.encode(m)["counts"].decode()}
        elif kind == 2:  # uncompressed counts not summing to H*W
            total = height * width + rng.choice([-7, -1, 1, 13])
            payload = {"size": [height, width], "counts": [total]}
        elif kind == 3:  # negative / non-int counts
            payload = {"size": [height, width], "counts": rng.choice([[-1, height * width + 1], [1.5], ["a"]])}
        elif kind == 4:  # wrong container types
            payload = rng.choice([{"size": [height, width]}, {"counts": "00"}, [height, width], "rle", 7,
                                  {"size": "12x16", "counts": "0"}, {"size": [height], "counts": "0"}])
        else:  # garbage compressed string
            payload = {"size": [height, width], "counts": "".join(rng.choice("!#$%&()*+") for _ in range(6))}
        yield Case(f"rle-{kind}-{i}", payload, must_fail=True)
