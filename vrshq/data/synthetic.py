"""Synthetic videos of moving shapes with referring, reasoning and no-target expressions.

Scene grammar (one video): 2-4 objects, each a unique (size, colour, shape) triple from
``small|large`` x ``red|green|blue|yellow`` x ``circle|square|triangle``; each moves in a straight
line and bounces off the frame border, at a speed class ``static|slow|medium|fast`` (at most one
static object, at most one fast one). Objects have a depth order; the mask of an object is its
**visible** part (the objects in front of it cut it). With probability ``p_occlusion`` a small
object is sent behind a large one half-way through the video. The background is a smooth grey
texture with per-frame pixel noise, so that flat colour alone does not give the masks away.

Expressions, all unambiguous given the scene (checked on the rendered masks):

* type 0, referring: one per object, with a random subset of attributes that identifies it alone
  ("the small red circle", "the blue square", "the yellow shape"); plus group expressions for
  attributes shared by several objects ("the two red shapes", "the three circles").
* type 1, reasoning: "the shape that moves the fastest" (only when its speed is at least
  ``fastest_ratio`` times the next), "which shape never moves?" (exactly one static object),
  "which shapes are moving?", "the object that hides behind the large blue square" (the only
  object at least ``hidden_fraction`` covered by it in some frame), "what covers the small red
  circle?". Some end in '?', as the question templates depend on it (method §1.3).
* type 2, no-target: a colour and shape that no object has ("the green triangle"), or a shape
  that never occurs ("the red star"); no obj_ids.

:func:`generate_synthetic_video` works in memory (training samples clips on the fly);
:func:`vrshq.data.write_synthetic_revos` writes the same videos in the ReVOS layout.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import cv2
import numpy as np
from vrshq.validation import Validated



__all__ = [
    "SHAPES",
    "COLOURS",
    "SIZES",
    "EXPRESSION_KINDS",
    "SyntheticSceneConfig",
    "SyntheticObject",
    "SyntheticExpression",
    "SyntheticVideo",
    "generate_synthetic_video",
    "synthetic_vocabulary",
]

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
#: RGB of each colour name: saturated, far from the grey background and from each other.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 90, 235),
    "yellow": (240, 210, 40),
}
SIZES: tuple[str, ...] = ("small", "large")
#: The kinds of expression the grammar writes (``SyntheticExpression.kind``).
EXPRESSION_KINDS: tuple[str, ...] = ("referring", "group", "fastest", "static", "moving", "hides_behind", "covers",
                                     "no_target")
#: Shapes that never occur: they only appear in no-target expressions.
_ABSENT_SHAPES: tuple[str, ...] = ("star", "hexagon")
_NUMBER_WORDS = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}
#: Reasoning templates per kind; ``{desc}`` is a unique noun phrase of another object.
_TEMPLATES: dict[str, tuple[str, ...]] = {
    "fastest": ("the shape that moves the fastest", "which shape moves the fastest?", "the fastest moving object"),
    "static": ("which shape never moves?", "the shape that stays still", "the object that does not move"),
    "moving": ("which shapes are moving?", "the moving shapes"),
    "hides_behind": ("the object that hides behind the {desc}", "what hides behind the {desc}?"),
    "covers": ("the shape that covers the {desc}", "what covers the {desc}?"),
}
_SHIFT = 4  # cv2 sub-pixel bits for drawing
# Extent of each shape (centre to farthest point) per unit radius; used for bouncing.
_EXTENT = {"circle": 1.0, "square": 0.886 * np.sqrt(2), "triangle": 1.3}


@dataclass(frozen=True)
class SyntheticSceneConfig(Validated):
    """Knobs of the scene grammar; sizes and speeds are fractions of ``min(height, width)``.

    Attributes:
        num_objects: inclusive range of objects per video.
        small_radius, large_radius: (low, high) radius ranges of the two size classes; disjoint
            so that "small" and "large" are never ambiguous.
        speeds: per-frame speed of the slow, medium and fast classes (jittered by ``speed_jitter``).
        p_static: probability that one object is static.
        p_fast: probability that one object is fast.
        p_occlusion: probability of a designed occlusion (a small object passing behind a large one).
        hidden_fraction: fraction of an object covered by another, in some frame, for it to "hide
            behind" it.
        fastest_ratio: the fastest object must be this many times faster than the next.
        min_visible_frames: every object must be at least half visible in this fraction of frames.
        group_expressions: how many multi-object referring expressions per video (at most).
        no_target_expressions: how many type-2 expressions per video.
        background_noise: std of the per-frame pixel noise (0-255 scale).
        expression_types: the type_ids to generate.
    """

    num_objects: tuple[int, int] = (2, 4)
    small_radius: tuple[float, float] = (0.09, 0.11)
    large_radius: tuple[float, float] = (0.16, 0.19)
    speeds: tuple[float, float, float] = (0.012, 0.03, 0.065)
    speed_jitter: float = 0.15
    p_static: float = 0.5
    p_fast: float = 0.7
    p_occlusion: float = 0.6
    hidden_fraction: float = 0.5
    fastest_ratio: float = 1.5
    min_visible_frames: float = 0.5
    group_expressions: int = 1
    no_target_expressions: int = 1
    background_noise: float = 5.0
    expression_types: tuple[int, ...] = (0, 1, 2)
    max_attempts: int = 50

    def problems(self) -> list[str]:
        """Every problem of these fields (``vrshq.validation``)."""
        problems = []
        lo, hi = self.num_objects
        if not 1 <= lo <= hi <= len(SHAPES) * len(COLOURS) * len(SIZES):
            problems.append(f"num_objects must be (low, high) with 1 <= low <= high <= 24, got {self.num_objects}")
        radii_ok = True
        for name in ("small_radius", "large_radius"):
            a, b = getattr(self, name)
            if not 0 < a <= b < 0.3:
                radii_ok = False
                problems.append(f"{name} must be (low, high) with 0 < low <= high < 0.3, got {(a, b)}")
        if radii_ok and self.small_radius[1] * 1.3 >= self.large_radius[0]:
            problems.append(
                f"small_radius {self.small_radius} and large_radius {self.large_radius} must be well apart "
                "(small high * 1.3 < large low) so that 'small' and 'large' are unambiguous"
            )
        if not 0 < self.speeds[0] < self.speeds[1] < self.speeds[2]:
            problems.append(f"speeds must be increasing and positive (slow, medium, fast), got {self.speeds}")
        for name in ("p_static", "p_fast", "p_occlusion", "hidden_fraction", "min_visible_frames", "speed_jitter"):
            if not 0 <= getattr(self, name) <= 1:
                problems.append(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.fastest_ratio < 1:
            problems.append(f"fastest_ratio must be >= 1, got {self.fastest_ratio}")
        if not set(self.expression_types) <= {0, 1, 2} or not self.expression_types:
            problems.append(f"expression_types must be a non-empty subset of (0, 1, 2), got {self.expression_types}")
        if self.max_attempts < 1:
            problems.append(f"max_attempts must be >= 1, got {self.max_attempts}")
        return problems


@dataclass(frozen=True, eq=False)
class SyntheticObject:
    """One shape of a synthetic video.

    Attributes:
        obj_id: index in the video (the ``obj_id`` of the meta json).
        shape, colour, size: the attributes named by expressions.
        radius: radius in pixels.
        speed_class: ``static|slow|medium|fast``; ``speed`` in pixels per frame.
        depth: drawing order (higher is in front).
        centers: ``(T, 2)`` float (y, x) centre per frame.
    """

    obj_id: int
    shape: str
    colour: str
    size: str
    radius: float
    speed_class: str
    speed: float
    depth: int
    centers: np.ndarray = field(repr=False)


@dataclass(frozen=True)
class SyntheticExpression:
    """An expression and its target objects (``obj_ids`` empty for no-target, type 2)."""

    text: str
    obj_ids: tuple[int, ...]
    type_id: int
    kind: str  # one of EXPRESSION_KINDS


@dataclass(frozen=True, eq=False)
class SyntheticVideo:
    """A rendered synthetic video.

    Attributes:
        frames: RGB uint8 ``(T, H, W, 3)``.
        object_masks: bool ``(N, T, H, W)``, the visible part of each object (index = obj_id).
        objects: the N objects.
        expressions: the expressions, in exp_id order.
    """

    frames: np.ndarray = field(repr=False)
    object_masks: np.ndarray = field(repr=False)
    objects: tuple[SyntheticObject, ...]
    expressions: tuple[SyntheticExpression, ...]

    def target_masks(self, expression: SyntheticExpression) -> np.ndarray:
        """Ground truth of an expression: union of its objects' visible masks, bool ``(T, H, W)``."""
        if not expression.obj_ids:
            return np.zeros(self.frames.shape[:3], dtype=bool)
        return self.object_masks[list(expression.obj_ids)].any(axis=0)

    @property
    def foreground(self) -> np.ndarray:
        """Union of all objects, bool ``(T, H, W)``."""
        return self.object_masks.any(axis=0)


def generate_synthetic_video(
    rng: np.random.Generator,
    *,
    num_frames: int,
    height: int,
    width: int,
    config: SyntheticSceneConfig | None = None,
) -> SyntheticVideo:
    """Generate one synthetic video in memory (deterministic given the generator's state).

    Args:
        rng: the random generator (e.g. ``np.random.default_rng([seed, video_index])``).
        num_frames, height, width: video size; at least 2 frames and 32 pixels a side.
        config: the scene grammar (defaults to :class:`SyntheticSceneConfig`).

    Raises:
        ValueError: bad sizes, or no valid scene found in ``config.max_attempts`` tries.
    """
    config = config or SyntheticSceneConfig()
    if num_frames < 2 or height < 32 or width < 32:
        raise ValueError(f"need num_frames >= 2 and height, width >= 32, got {num_frames}, {height}, {width}")
    background = _background(rng, height, width)
    for _ in range(config.max_attempts):
        objects = _sample_objects(rng, num_frames, height, width, config)
        full = np.stack([_draw_track(obj, height, width) for obj in objects])  # (N, T, H, W)
        visible = _visible_masks(full, objects)
        area = full.sum(axis=(2, 3))
        half_visible = (visible.sum(axis=(2, 3)) >= 0.5 * np.maximum(area, 1)).mean(axis=1)
        if (half_visible >= config.min_visible_frames).all():
            break
    else:
        raise ValueError(f"no valid scene in {config.max_attempts} attempts: loosen the config or enlarge the frame")
    frames = _render(rng, background, objects, full, config.background_noise)
    expressions = _expressions(rng, objects, full, config)
    return SyntheticVideo(frames=frames, object_masks=visible, objects=tuple(objects), expressions=tuple(expressions))


# ----------------------------------------------------------------------------------------- scene


def _sample_objects(
    rng: np.random.Generator, num_frames: int, height: int, width: int, config: SyntheticSceneConfig
) -> list[SyntheticObject]:
    n = int(rng.integers(config.num_objects[0], config.num_objects[1] + 1))
    triples = list(itertools.product(SIZES, COLOURS, SHAPES))
    chosen = [triples[i] for i in rng.choice(len(triples), size=n, replace=False)]
    base = min(height, width)
    classes = [str(c) for c in rng.choice(["slow", "medium"], size=n)]
    order = list(rng.permutation(n))
    if n > 1 and rng.random() < config.p_static:
        classes[order.pop()] = "static"
    if rng.random() < config.p_fast and order:
        classes[order.pop()] = "fast"
    depth = [int(d) for d in rng.permutation(n)]
    radii = []
    for size, _, _ in chosen:
        lo, hi = config.small_radius if size == "small" else config.large_radius
        radii.append(float(rng.uniform(lo, hi) * base))
    speeds = []
    for speed_class in classes:
        if speed_class == "static":
            speeds.append(0.0)
        else:
            nominal = config.speeds[("slow", "medium", "fast").index(speed_class)]
            speeds.append(float(nominal * base * rng.uniform(1 - config.speed_jitter, 1 + config.speed_jitter)))
    angles = rng.uniform(0, 2 * np.pi, size=n)
    velocity = np.stack([np.sin(angles), np.cos(angles)], axis=1) * np.asarray(speeds)[:, None]
    extent = np.array([_EXTENT[shape] * r for (_, _, shape), r in zip(chosen, radii)])
    starts = np.stack([rng.uniform(extent, height - extent), rng.uniform(extent, width - extent)], axis=1)
    centers = [_bounce(starts[i], velocity[i], extent[i], num_frames, height, width) for i in range(n)]
    if n > 1 and rng.random() < config.p_occlusion:
        _design_occlusion(rng, chosen, radii, speeds, velocity, extent, centers, depth, num_frames, height, width)
    return [
        SyntheticObject(
            obj_id=i, shape=chosen[i][2], colour=chosen[i][1], size=chosen[i][0], radius=radii[i],
            speed_class=classes[i], speed=speeds[i], depth=depth[i], centers=centers[i],
        )
        for i in range(n)
    ]


def _design_occlusion(rng, chosen, radii, speeds, velocity, extent, centers, depth, num_frames, height, width) -> None:
    """Send a smaller object behind a larger one: it reaches the front object's centre mid-video."""
    order = np.argsort(radii)
    back, front = int(order[0]), int(order[-1])
    if radii[back] * 1.3 > radii[front] or (speeds[back] == 0 and speeds[front] == 0):
        return
    if depth[back] > depth[front]:
        depth[back], depth[front] = depth[front], depth[back]
    meet = int(rng.integers(num_frames // 3, max(num_frames // 3 + 1, (2 * num_frames) // 3 + 1)))
    target = centers[front][meet]
    lo = np.array([extent[back], extent[back]])
    hi = np.array([height - extent[back], width - extent[back]])
    target = np.clip(target, lo, hi)
    # unfolded start so that the bounced track is at `target` at frame `meet`
    centers[back] = _bounce(target - velocity[back] * meet, velocity[back], extent[back], num_frames, height, width)


def _bounce(start: np.ndarray, velocity: np.ndarray, extent: float, num_frames: int, height: int, width: int) -> np.ndarray:
    """Centres ``(T, 2)`` of a straight-line motion reflected at the borders (a triangle wave)."""
    t = np.arange(num_frames, dtype=np.float64)[:, None]
    unfolded = np.asarray(start, dtype=np.float64)[None] + t * np.asarray(velocity, dtype=np.float64)[None]
    lo = np.array([extent, extent])
    span = np.maximum(np.array([height, width]) - 2 * extent, 1e-6)
    phase = np.mod(unfolded - lo, 2 * span)
    return lo + np.where(phase > span, 2 * span - phase, phase)


def _polygon(shape: str, center: np.ndarray, radius: float) -> np.ndarray | None:
    cy, cx = center
    if shape == "square":
        s = 0.886 * radius  # same area as the circle
        points = [(cx - s, cy - s), (cx + s, cy - s), (cx + s, cy + s), (cx - s, cy + s)]
    elif shape == "triangle":
        r = 1.3 * radius
        points = [(cx + r * np.sin(a), cy - r * np.cos(a)) for a in (0.0, 2 * np.pi / 3, 4 * np.pi / 3)]
    else:
        return None
    return np.round(np.asarray(points) * (1 << _SHIFT)).astype(np.int32)


def _draw_track(obj: SyntheticObject, height: int, width: int) -> np.ndarray:
    masks = np.zeros((len(obj.centers), height, width), dtype=np.uint8)
    for t, center in enumerate(obj.centers):
        if obj.shape == "circle":
            c = (int(round(center[1] * (1 << _SHIFT))), int(round(center[0] * (1 << _SHIFT))))
            cv2.circle(masks[t], c, int(round(obj.radius * (1 << _SHIFT))), 1, -1, cv2.LINE_8, _SHIFT)
        else:
            cv2.fillPoly(masks[t], [_polygon(obj.shape, center, obj.radius)], 1, cv2.LINE_8, _SHIFT)
    return masks.astype(bool)


def _visible_masks(full: np.ndarray, objects: list[SyntheticObject]) -> np.ndarray:
    visible = full.copy()
    for i, obj in enumerate(objects):
        for j, other in enumerate(objects):
            if other.depth > obj.depth:
                visible[i] &= ~full[j]
    return visible


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Smooth grey texture with a faint tint: float32 ``(H, W, 3)``."""
    coarse = rng.normal(size=(max(2, height // 8), max(2, width // 8), 1)).astype(np.float32)
    texture = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)[..., None]
    tint = rng.uniform(-8, 8, size=3).astype(np.float32)
    fine = rng.normal(scale=6.0, size=(height, width, 1)).astype(np.float32)
    return np.clip(115 + 22 * texture + fine + tint, 0, 255)


def _render(
    rng: np.random.Generator, background: np.ndarray, objects: list[SyntheticObject], full: np.ndarray, noise_std: float
) -> np.ndarray:
    """Paint the objects back to front over the background, then add per-frame pixel noise."""
    label = np.zeros(full.shape[1:], dtype=np.uint8)  # 0 = background, i + 1 = object i (front-most)
    for i in sorted(range(len(objects)), key=lambda k: objects[k].depth):
        label[full[i]] = i + 1
    palette = np.asarray([COLOURS[o.colour] for o in objects], dtype=np.float32).reshape(-1, 3)
    frames = np.where(label[..., None] > 0, palette[np.maximum(label, 1) - 1], background[None])
    frames += rng.standard_normal(size=frames.shape[:3] + (1,), dtype=np.float32) * np.float32(noise_std)
    return np.clip(np.rint(frames), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------------- expressions


def synthetic_vocabulary() -> tuple[str, ...]:
    """Every word the generator can write, sorted; '?' is a word of its own.

    A tiny word-level tokenizer built from this list covers every synthetic expression
    (split the lower-cased text on whitespace after putting spaces around '?').
    """
    words = {"the", "shape", "shapes", "?"}
    words.update(SIZES, COLOURS, _NUMBER_WORDS.values())
    for shape in (*SHAPES, *_ABSENT_SHAPES):
        words.update((shape, shape + "s"))
    for templates in _TEMPLATES.values():
        for template in templates:
            words.update(template.replace("{desc}", "").replace("?", " ? ").split())
    return tuple(sorted(words))



def _matches(obj: SyntheticObject, attrs: dict[str, str]) -> bool:
    return all(getattr(obj, key) == value for key, value in attrs.items())


def _phrase(attrs: dict[str, str], *, plural: bool = False) -> str:
    noun = attrs.get("shape", "shape")
    if plural:
        noun += "s"
    words = [attrs[k] for k in ("size", "colour") if k in attrs]
    return " ".join([*words, noun])


def _unique_descriptions(obj: SyntheticObject, objects: list[SyntheticObject]) -> list[str]:
    """Noun phrases (without article) that match ``obj`` and no other object."""
    out = []
    for keys in (("shape",), ("colour",), ("size",), ("colour", "shape"), ("size", "shape"), ("size", "colour"), ("size", "colour", "shape")):
        attrs = {k: getattr(obj, k) for k in keys}
        if [o.obj_id for o in objects if _matches(o, attrs)] == [obj.obj_id]:
            out.append(_phrase(attrs))
    return out


def _pick(rng: np.random.Generator, options: list[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _expressions(
    rng: np.random.Generator, objects: list[SyntheticObject], full: np.ndarray, config: SyntheticSceneConfig
) -> list[SyntheticExpression]:
    out: list[SyntheticExpression] = []
    descriptions = {o.obj_id: _unique_descriptions(o, objects) for o in objects}
    if 0 in config.expression_types:
        for obj in objects:
            out.append(SyntheticExpression(f"the {_pick(rng, descriptions[obj.obj_id])}", (obj.obj_id,), 0, "referring"))
        out.extend(_group_expressions(rng, objects, config))
    if 1 in config.expression_types:
        out.extend(_reasoning_expressions(rng, objects, full, descriptions, config))
    if 2 in config.expression_types:
        out.extend(_no_target_expressions(rng, objects, config))
    return out


def _group_expressions(rng, objects, config) -> list[SyntheticExpression]:
    groups = {}
    for key in ("colour", "shape", "size"):
        for value in sorted({getattr(o, key) for o in objects}):
            members = tuple(o.obj_id for o in objects if getattr(o, key) == value)
            if 2 <= len(members) and len(members) in _NUMBER_WORDS:
                groups[_phrase({key: value}, plural=True)] = members
    names = sorted(groups)
    picked = [names[i] for i in rng.permutation(len(names))[: config.group_expressions]]
    return [
        SyntheticExpression(f"the {_NUMBER_WORDS[len(groups[n])]} {n}", groups[n], 0, "group") for n in picked
    ]


def _reasoning_expressions(rng, objects, full, descriptions, config) -> list[SyntheticExpression]:
    out = []
    speeds = sorted(((o.speed, o.obj_id) for o in objects), reverse=True)
    if len(objects) > 1 and speeds[0][0] > 0 and speeds[0][0] >= config.fastest_ratio * speeds[1][0]:
        text = _pick(rng, list(_TEMPLATES["fastest"]))
        out.append(SyntheticExpression(text, (speeds[0][1],), 1, "fastest"))
    static = [o.obj_id for o in objects if o.speed == 0]
    moving = tuple(o.obj_id for o in objects if o.speed > 0)
    if len(static) == 1 and moving:
        text = _pick(rng, list(_TEMPLATES["static"]))
        out.append(SyntheticExpression(text, (static[0],), 1, "static"))
        if len(moving) >= 2:
            out.append(SyntheticExpression(_pick(rng, list(_TEMPLATES["moving"])), moving, 1, "moving"))
    # hidden[a, b]: in some frame, at least `hidden_fraction` of a is covered by b (b in front of a)
    area = np.maximum(full.sum(axis=(2, 3)), 1)
    n = len(objects)
    hidden = np.zeros((n, n), dtype=bool)
    for a, b in itertools.permutations(range(n), 2):
        if objects[b].depth > objects[a].depth:
            covered = (full[a] & full[b]).sum(axis=(1, 2)) / area[a]
            hidden[a, b] = bool((covered >= config.hidden_fraction).any())
    for b in range(n):
        (behind,) = np.nonzero(hidden[:, b])
        if len(behind) == 1 and descriptions[b]:
            desc = _pick(rng, descriptions[b])
            text = _pick(rng, list(_TEMPLATES["hides_behind"])).format(desc=desc)
            out.append(SyntheticExpression(text, (int(behind[0]),), 1, "hides_behind"))
    for a in range(n):
        (covers,) = np.nonzero(hidden[a, :])
        if len(covers) == 1 and descriptions[a]:
            desc = _pick(rng, descriptions[a])
            text = _pick(rng, list(_TEMPLATES["covers"])).format(desc=desc)
            out.append(SyntheticExpression(text, (int(covers[0]),), 1, "covers"))
    return out


def _no_target_expressions(rng, objects, config) -> list[SyntheticExpression]:
    present = {(o.colour, o.shape) for o in objects}
    absent = [f"{c} {s}" for c, s in itertools.product(COLOURS, SHAPES) if (c, s) not in present]
    absent += [f"{c} {s}" for c, s in itertools.product(COLOURS, _ABSENT_SHAPES)]
    picked = [absent[i] for i in rng.permutation(len(absent))[: config.no_target_expressions]]
    return [SyntheticExpression(f"the {p}", (), 2, "no_target") for p in picked]
