"""Turn a scores table into the paper's tables, breakdowns, plots and a Markdown/HTML report.

All aggregation runs in DuckDB over the Arrow table (zero-copy), so the same SQL works whether the
scores came from a 10-video test or a 100k-expression run. The ReVOS headline numbers come from
``vrshq.metrics`` (one definition of "overall" in the project); this module only slices.

Conventions (ReVOS, method §7): J&F aggregates exclude ``type_id == 2`` (no-target)
expressions; "overall" is the plain mean of the referring and reasoning numbers, not a pooled mean
(with only one of the two present, e.g. MeViS, it is that one). Robustness R is reported from the
rows that have it (null when the dataset has no ``mask_dict_foreground.json``).
"""
from __future__ import annotations

import html
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from vrshq import metrics

__all__ = [
    "BREAKDOWNS",
    "breakdown",
    "format_summary_table",
    "keyframe_rows",
    "keyframe_summary",
    "markdown_table",
    "overlay_frame",
    "overlay_mp4",
    "per_video",
    "plot_breakdowns",
    "plot_distributions",
    "plot_keyframes",
    "plot_overlay_grid",
    "render_html",
    "render_markdown",
    "summary_table",
]

#: Breakdown name -> (SQL expression of the binned value, human title).
BREAKDOWNS: dict[str, tuple[str, str]] = {
    "expression_length": ("len(string_split(trim(expression), ' '))", "expression length (words)"),
    "object_count": ("num_objects", "objects in the target"),
    "video_length": ("num_frames", "video length (frames)"),
    "object_size": ("mean_target_area", "mean target area (fraction of the frame)"),
}


def _duck(table: pa.Table):
    import duckdb

    con = duckdb.connect()
    con.register("scores", table)
    return con


def _fetch_table(con: Any, query: str) -> pa.Table:
    """Run ``query`` and return an Arrow table (duckdb 1.x ``fetch_arrow_table``, 2.x ``to_arrow_table``)."""
    relation = con.sql(query)
    return relation.to_arrow_table() if hasattr(relation, "to_arrow_table") else relation.arrow()


def _clean(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


# --------------------------------------------------------------------------- headline table


def _split_dict(split: Any) -> dict[str, Any]:
    return {"n": split.num_expressions, "j": split.j, "f": split.f, "jf": split.jf,
            "accuracy": split.accuracy, "robustness": split.robustness}


def summary_table(scores: pa.Table) -> dict[str, Any]:
    """The paper's table for one (dataset, split): referring, reasoning, overall J/F/J&F, A, R.

    With both referring and reasoning rows, :func:`vrshq.metrics.summarize_revos` (overall = mean
    of the two); with only one kind (MeViS, Ref-YouTube-VOS), :func:`vrshq.metrics.summarize_mean`
    over it, reported as that kind and as overall. Rows without J (no ground truth) are left out.
    No-target rows (type 2) never enter J&F; their mean R and A are reported under ``no_target``.

    Returns:
        ``{"convention", "referring", "reasoning", "overall"`` (each None or ``{"n", "j", "f",
        "jf", "accuracy", "robustness"}``), ``"no_target": {"n", "accuracy", "robustness"},
        "accuracy", "robustness"}`` (the last two: overall A and R, None where missing).
    """
    import pyarrow.compute as pc

    scored = scores.filter(pc.is_valid(scores.column("j")))
    type_ids = scored.column("type_id")
    parts = {name: scored.filter(pc.equal(type_ids, t)) for name, t in (("referring", 0), ("reasoning", 1))}
    result: dict[str, Any] = {"convention": None, "referring": None, "reasoning": None, "overall": None}
    if parts["referring"].num_rows and parts["reasoning"].num_rows:
        revos = metrics.summarize_revos(scored)
        result.update(convention="revos", referring=_split_dict(revos.referring),
                      reasoning=_split_dict(revos.reasoning), overall=_split_dict(revos.overall))
    else:
        for name, part in parts.items():
            if part.num_rows:
                result.update({"convention": "mean", name: _split_dict(metrics.summarize_mean(part)),
                               "overall": _split_dict(metrics.summarize_mean(part))})
    no_target = scored.filter(pc.equal(type_ids, 2))

    def mean_of(column: str) -> float | None:
        value = pc.mean(no_target.column(column)).as_py() if no_target.num_rows else None
        return None if value is None else float(value)

    result["no_target"] = {"n": no_target.num_rows, "accuracy": mean_of("accuracy"),
                           "robustness": mean_of("robustness")}
    overall = result["overall"] or {}
    result["accuracy"] = overall.get("accuracy")
    result["robustness"] = overall.get("robustness")
    return result


def _fmt(value: Any, scale: float = 100.0) -> str:
    return "–" if value is None else f"{value * scale:.1f}"


def format_summary_table(table: Mapping[str, Any]) -> str:
    """The summary as a fixed-width text table (J, F, J&F, A, R in percent)."""
    lines = [f"{'':<10} {'J':>6} {'F':>6} {'J&F':>6} {'n':>6}"]
    for name in ("referring", "reasoning", "overall"):
        row = table.get(name) or {}
        lines.append(f"{name:<10} {_fmt(row.get('j')):>6} {_fmt(row.get('f')):>6} {_fmt(row.get('jf')):>6} "
                     f"{row.get('n', '') if row.get('n') is not None else '':>6}")
    lines.append(f"A (accuracy) {_fmt(table.get('accuracy'))}   R (robustness) {_fmt(table.get('robustness'))}")
    no_target = table.get("no_target") or {}
    if no_target.get("n"):
        lines.append(f"no-target expressions: {no_target['n']}, R {_fmt(no_target.get('robustness'))}, "
                     f"A {_fmt(no_target.get('accuracy'))}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- breakdowns


def _bin_edges(values: np.ndarray, bins: int) -> list[float]:
    edges = np.unique(np.quantile(values, np.linspace(0, 1, bins + 1))) if len(values) else np.array([])
    return [float(e) for e in edges]


def _bin_label(lo: float, hi: float, *, kind: str, last: bool) -> str:
    """``"4–6"`` for integer bins (inclusive), ``"2.4–5.0%"`` for area bins (half-open but last)."""
    if kind == "percent":
        return f"{lo * 100:.1f}–{hi * 100:.1f}%"
    lo_i, hi_i = int(math.ceil(lo)), int(math.ceil(hi)) - (0 if last else 1)
    return f"{lo_i}" if lo_i >= hi_i else f"{lo_i}–{hi_i}"


def breakdown(scores: pa.Table, name: str, *, bins: int = 3) -> pa.Table:
    """J, F, J&F per bin of one :data:`BREAKDOWNS` variable (type 2 rows excluded).

    Numeric variables are cut at quantiles (``bins`` groups of about equal size; the labels give
    the ranges) so every run gets populated groups; ``object_count`` is single vs multi-object.

    Returns:
        columns ``group, n, j, f, jf`` ordered by group.
    """
    if name not in BREAKDOWNS:
        raise ValueError(f"breakdown name {name!r}: must be one of {sorted(BREAKDOWNS)}")
    sql_value, _ = BREAKDOWNS[name]
    con = _duck(scores)
    try:
        base = _fetch_table(con, f"SELECT {sql_value} AS v, j, f, jf FROM scores WHERE type_id <> 2 AND jf IS NOT NULL")
        con.register("base", base)
        if name == "object_count":
            query = ("SELECT CASE WHEN v <= 1 THEN 'single' ELSE 'multi' END AS grp, "
                     "min(v) AS lo, count(*) AS n, avg(j) AS j, avg(f) AS f, avg(jf) AS jf "
                     "FROM base GROUP BY grp ORDER BY lo")
        else:
            values = np.asarray(base.column("v").to_numpy(zero_copy_only=False), dtype=float)
            edges = _bin_edges(values, bins)
            kind = "percent" if name == "object_size" else "integer"
            if len(edges) <= 1:  # one value only: one group named by it
                label = _bin_label(edges[0], edges[0], kind=kind, last=True) if edges else "all"
                query = (f"SELECT '{label}' AS grp, min(v) AS lo, count(*) AS n, avg(j) AS j, avg(f) AS f, "
                         "avg(jf) AS jf FROM base GROUP BY grp")
            else:
                cases = []
                for k in range(len(edges) - 1):
                    lo, hi = edges[k], edges[k + 1]
                    last = k == len(edges) - 2
                    cond = f"v >= {lo!r} AND v {'<=' if last else '<'} {hi!r}"
                    cases.append(f"WHEN {cond} THEN '{k}:{_bin_label(lo, hi, kind=kind, last=last)}'")
                query = (f"SELECT CASE {' '.join(cases)} END AS grp, min(v) AS lo, count(*) AS n, "
                         "avg(j) AS j, avg(f) AS f, avg(jf) AS jf FROM base GROUP BY grp ORDER BY lo")
        result = _fetch_table(con, query)
    finally:
        con.close()
    groups = [g.split(":", 1)[1] if ":" in g else g for g in result.column("grp").to_pylist()]
    return pa.table({"group": groups, "n": result.column("n"), "j": result.column("j"),
                     "f": result.column("f"), "jf": result.column("jf")})


def per_video(scores: pa.Table) -> pa.Table:
    """Per-video J, F, J&F (type 2 excluded), R and expression counts, worst video first."""
    con = _duck(scores)
    try:
        return _fetch_table(
            con,
            "SELECT video_id, count(*) AS expressions, "
            "avg(j) FILTER (WHERE type_id <> 2) AS j, avg(f) FILTER (WHERE type_id <> 2) AS f, "
            "avg(jf) FILTER (WHERE type_id <> 2) AS jf, avg(robustness) AS robustness, "
            "max(num_frames) AS num_frames FROM scores GROUP BY video_id ORDER BY jf NULLS FIRST, video_id",
        )
    finally:
        con.close()


# --------------------------------------------------------------------------- TKS keyframe analysis


def keyframe_rows(keyframe_index: int, gt_areas: np.ndarray) -> dict[str, Any]:
    """Compare the TKS keyframe with the frame where the target is largest.

    Args:
        keyframe_index: the frame TKS picked.
        gt_areas: (T,) ground-truth target pixels per frame.

    Returns:
        ``largest_frame`` (argmax area, first on ties), ``visible`` (target present at the
        keyframe), ``is_largest`` (keyframe area equals the max), ``area_ratio`` (keyframe area /
        max area; None when the target is never visible) and ``frame_distance``.
    """
    gt_areas = np.asarray(gt_areas)
    if not 0 <= keyframe_index < len(gt_areas):
        raise ValueError(f"keyframe_index {keyframe_index} outside the video's {len(gt_areas)} frames")
    largest = int(np.argmax(gt_areas))
    peak = float(gt_areas[largest])
    at_key = float(gt_areas[keyframe_index])
    return {
        "largest_frame": largest,
        "visible": at_key > 0,
        "is_largest": peak > 0 and at_key == peak,
        "area_ratio": at_key / peak if peak > 0 else None,
        "frame_distance": abs(int(keyframe_index) - largest),
    }


def keyframe_summary(rows: pa.Table) -> dict[str, Any]:
    """Share of expressions whose keyframe shows the target / is the largest-target frame."""
    n = rows.num_rows
    if n == 0:
        return {"n": 0, "visible_rate": None, "largest_rate": None, "mean_area_ratio": None,
                "median_frame_distance": None}
    visible = np.asarray(rows.column("visible").to_pylist(), bool)
    largest = np.asarray(rows.column("is_largest").to_pylist(), bool)
    ratios = [r for r in rows.column("area_ratio").to_pylist() if r is not None]
    return {
        "n": n,
        "visible_rate": float(visible.mean()),
        "largest_rate": float(largest.mean()),
        "mean_area_ratio": float(np.mean(ratios)) if ratios else None,
        "median_frame_distance": float(np.median(rows.column("frame_distance").to_numpy())),
    }


# --------------------------------------------------------------------------- plots


def _figure_png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_distributions(scores: pa.Table, *, title: str) -> bytes:
    """PNG: histograms of per-expression J&F by expression type, plus J vs F scatter."""
    plt = _pyplot()
    fig, (ax_hist, ax_scatter) = plt.subplots(1, 2, figsize=(11, 4.2))
    types = scores.column("expression_type").to_pylist()
    jf = scores.column("jf").to_pylist()
    j = scores.column("j").to_pylist()
    f = scores.column("f").to_pylist()
    bins = np.linspace(0, 1, 21)
    colours = {"referring": "tab:blue", "reasoning": "tab:orange", "no_target": "tab:gray"}
    for name in ("referring", "reasoning"):
        values = [v for t, v in zip(types, jf) if t == name and v is not None]
        if values:
            ax_hist.hist(values, bins=bins, alpha=0.6, color=colours[name],
                         label=f"{name} (n={len(values)}, mean {np.mean(values) * 100:.1f})")
            ax_scatter.scatter([a for t, a, b in zip(types, j, f) if t == name and a is not None],
                               [b for t, a, b in zip(types, j, f) if t == name and a is not None],
                               s=14, alpha=0.7, color=colours[name], label=name)
    ax_hist.set_xlabel("J&F per expression")
    ax_hist.set_ylabel("expressions")
    ax_hist.yaxis.get_major_locator().set_params(integer=True)
    ax_hist.set_xlim(0, 1)
    ax_hist.set_title("J&F distribution (no-target excluded)")
    ax_hist.legend(fontsize=8, loc="upper left")
    ax_scatter.plot([0, 1], [0, 1], color="lightgray", linewidth=1)
    ax_scatter.set_xlim(0, 1)
    ax_scatter.set_ylim(0, 1)
    ax_scatter.set_xlabel("J (region)")
    ax_scatter.set_ylabel("F (boundary)")
    ax_scatter.set_title("J vs F per expression")
    ax_scatter.legend(fontsize=8, loc="upper left")
    fig.suptitle(title)
    return _figure_png(fig)


def plot_breakdowns(tables: Mapping[str, pa.Table], *, title: str) -> bytes:
    """PNG: one bar chart of J&F per group for each breakdown, with n on each bar."""
    plt = _pyplot()
    names = list(tables)
    cols = 2
    rows = max(1, math.ceil(len(names) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(11, 3.6 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        table = tables[name]
        groups = table.column("group").to_pylist()
        values = [v * 100 if v is not None else 0 for v in table.column("jf").to_pylist()]
        counts = table.column("n").to_pylist()
        bars = ax.bar(range(len(groups)), values, color="tab:blue", alpha=0.8)
        for bar, n in zip(bars, counts):
            ax.annotate(f"n={n}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        ha="center", va="bottom", fontsize=8)
        ax.set_xticks(range(len(groups)), groups, fontsize=8)
        ax.set_ylim(0, 105)
        ax.set_ylabel("J&F (%)")
        ax.set_title(BREAKDOWNS[name][1], fontsize=10)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    return _figure_png(fig)


def plot_keyframes(rows: pa.Table, *, title: str) -> bytes:
    """PNG: histogram of (target area at the TKS keyframe / largest target area)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    ratios = [r for r in rows.column("area_ratio").to_pylist() if r is not None]
    ax.hist(ratios, bins=np.linspace(0, 1, 11), color="tab:green", alpha=0.8)
    summary = keyframe_summary(rows)
    ax.set_xlabel("target area at TKS keyframe / largest target area")
    ax.set_ylabel("expressions")
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.set_xlim(0, 1)
    visible = summary["visible_rate"]
    ax.set_title(f"{title}\ntarget visible at keyframe: {_fmt(visible)}% of {summary['n']}, "
                 f"keyframe = largest frame: {_fmt(summary['largest_rate'])}%", fontsize=10)
    return _figure_png(fig)


# --------------------------------------------------------------------------- documents


def markdown_table(table: pa.Table, *, percent: Sequence[str] = ("j", "f", "jf", "robustness", "accuracy"),
                   max_rows: int | None = None) -> str:
    """A GitHub-flavoured Markdown table; metric columns in percent with one decimal."""
    names = table.column_names
    rows = table.to_pylist()
    shown = rows if max_rows is None else rows[:max_rows]

    def cell(name: str, value: Any) -> str:
        if value is None:
            return "–"
        if name in percent and isinstance(value, float):
            return f"{value * 100:.1f}"
        if isinstance(value, float):
            return f"{value:.3g}"
        return str(value).replace("|", "\\|")

    lines = ["| " + " | ".join(names) + " |", "|" + "---|" * len(names)]
    lines += ["| " + " | ".join(cell(n, r[n]) for n in names) + " |" for r in shown]
    if max_rows is not None and len(rows) > max_rows:
        lines.append(f"\n({len(rows) - max_rows} more rows in the CSV)")
    return "\n".join(lines)


def _summary_as_table(summary: Mapping[str, Any]) -> pa.Table:
    rows = []
    for name in ("referring", "reasoning", "overall"):
        row = summary.get(name) or {}
        rows.append({"": name, "n": row.get("n"), "j": row.get("j"), "f": row.get("f"), "jf": row.get("jf"),
                     "accuracy": row.get("accuracy"), "robustness": row.get("robustness")})
    no_target = summary.get("no_target") or {}
    if no_target.get("n"):
        rows.append({"": "no-target", "n": no_target["n"], "j": None, "f": None, "jf": None,
                     "accuracy": no_target.get("accuracy"), "robustness": no_target.get("robustness")})
    schema = pa.schema([("", pa.string()), ("n", pa.int64())]
                       + [(c, pa.float64()) for c in ("j", "f", "jf", "accuracy", "robustness")])
    return pa.Table.from_pylist(rows, schema=schema)


def render_markdown(sections: Mapping[str, Any]) -> str:
    """The report as Markdown. ``sections`` is what ``jobs.report`` assembles (see there)."""
    out = [f"# {sections['title']}", "", sections.get("intro", ""), "", "## Summary", "",
           markdown_table(_summary_as_table(sections["summary"])), "",
           f"A (pixel accuracy): {_fmt(sections['summary'].get('accuracy'))} · "
           f"R (robustness): {_fmt(sections['summary'].get('robustness'))}", ""]
    for note in sections.get("notes", []):
        out += [f"> {note}", ""]
    out += ["## Score distributions", "", "![distributions](distributions.png)", ""]
    out += ["## Breakdowns", "", "![breakdowns](breakdowns.png)", ""]
    out += ["Groups pool referring and reasoning expressions (plain means over the group's "
            "expressions; no-target excluded). Numeric variables are cut at quantiles.", ""]
    for name, table in sections["breakdowns"].items():
        out += [f"### J&F by {BREAKDOWNS[name][1]}", "", markdown_table(table), ""]
    out += ["## TKS keyframe vs the frame where the target is largest", ""]
    if sections.get("keyframes") is not None:
        kf = sections["keyframes"]
        out += [f"Expressions analysed: {kf['n']}; target visible at the keyframe: {_fmt(kf['visible_rate'])}%; "
                f"keyframe is a largest-target frame: {_fmt(kf['largest_rate'])}%; mean area ratio "
                f"{_fmt(kf['mean_area_ratio'])}%; median distance {kf['median_frame_distance']} frames.", "",
                "![keyframes](keyframes.png)", ""]
    else:
        out += [sections.get("keyframes_missing", "not available"), ""]
    out += ["## Per video (worst first)", "", markdown_table(sections["per_video"], max_rows=50), ""]
    if sections.get("errors"):
        out += ["## Errors", "", markdown_table(sections["errors"], max_rows=50), ""]
    if sections.get("overlays"):
        out += ["## Overlays", ""] + [f"![{name}]({path})" for name, path in sections["overlays"]] + [""]
    return "\n".join(out)


def _html_table(table: pa.Table, *, max_rows: int | None = None) -> str:
    md_rows = markdown_table(table, max_rows=max_rows).split("\n")
    head = [c.strip() for c in md_rows[0].strip("|").split(" | ")]
    body = [r for r in md_rows[2:] if r.startswith("|")]
    cells = ["<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"]
    for row in body:
        values = [c.strip().replace("\\|", "|") for c in row.strip("|").split(" | ")]
        cells.append("<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in values) + "</tr>")
    return "<table>" + "".join(cells) + "</table>"


def render_html(sections: Mapping[str, Any]) -> str:
    """The same report as a standalone HTML page (images referenced next to it)."""
    esc = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(sections['title'])}</title>",
             "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}img{max-width:100%}</style></head><body>",
             f"<h1>{esc(sections['title'])}</h1><p>{esc(sections.get('intro', ''))}</p>",
             "<h2>Summary</h2>", _html_table(_summary_as_table(sections["summary"])),
             f"<p>A (pixel accuracy): {_fmt(sections['summary'].get('accuracy'))} · "
             f"R (robustness): {_fmt(sections['summary'].get('robustness'))}</p>"]
    parts += [f"<blockquote>{esc(n)}</blockquote>" for n in sections.get("notes", [])]
    parts += ["<h2>Score distributions</h2><img src='distributions.png'>",
              "<h2>Breakdowns</h2><img src='breakdowns.png'>",
              "<p>Groups pool referring and reasoning expressions (plain means over the group's expressions; "
              "no-target excluded). Numeric variables are cut at quantiles.</p>"]
    for name, table in sections["breakdowns"].items():
        parts += [f"<h3>J&amp;F by {esc(BREAKDOWNS[name][1])}</h3>", _html_table(table)]
    parts.append("<h2>TKS keyframe vs the frame where the target is largest</h2>")
    if sections.get("keyframes") is not None:
        kf = sections["keyframes"]
        parts += [f"<p>Expressions analysed: {kf['n']}; target visible at the keyframe: {_fmt(kf['visible_rate'])}%; "
                  f"keyframe is a largest-target frame: {_fmt(kf['largest_rate'])}%.</p><img src='keyframes.png'>"]
    else:
        parts.append(f"<p>{esc(sections.get('keyframes_missing', 'not available'))}</p>")
    parts += ["<h2>Per video (worst first)</h2>", _html_table(sections["per_video"], max_rows=50)]
    if sections.get("errors"):
        parts += ["<h2>Errors</h2>", _html_table(sections["errors"], max_rows=50)]
    if sections.get("overlays"):
        parts.append("<h2>Overlays</h2>")
        parts += [f"<h3>{esc(name)}</h3><img src='{esc(path)}'>" for name, path in sections["overlays"]]
    parts.append("</body></html>")
    return "\n".join(parts)


# --------------------------------------------------------------------------- overlays


def _contour(mask: np.ndarray, width: int) -> np.ndarray:
    """Inner boundary band of ``mask``, ``width`` pixels thick."""
    import cv2

    kernel = np.ones((2 * width + 1, 2 * width + 1), np.uint8)
    return mask & ~(cv2.erode(mask.astype(np.uint8), kernel, borderType=cv2.BORDER_REPLICATE) > 0)


def overlay_frame(frame: np.ndarray, pred: np.ndarray, gt: np.ndarray | None = None) -> np.ndarray:
    """RGB uint8 (H', W', 3): prediction filled magenta (50%) with a magenta edge, GT edge in cyan.

    Magenta and cyan are rare in natural video (and absent from the synthetic shapes' colours).

    Frames under 240 px high are upscaled (nearest neighbour) first so that 1-px edges stay thin
    relative to the objects.
    """
    scale = max(1, math.ceil(240 / frame.shape[0]))
    if scale > 1:
        frame, pred = frame.repeat(scale, 0).repeat(scale, 1), pred.repeat(scale, 0).repeat(scale, 1)
        gt = None if gt is None else gt.repeat(scale, 0).repeat(scale, 1)
    out = frame.astype(np.float32).copy()
    magenta = np.array([255, 0, 255], np.float32)
    out[pred] = 0.5 * out[pred] + 0.5 * magenta
    width = max(1, round(min(out.shape[:2]) / 240))
    out[_contour(pred, width)] = magenta
    if gt is not None:
        out[_contour(gt, width)] = np.array([0, 255, 255], np.float32)
    return out.clip(0, 255).astype(np.uint8)


def plot_overlay_grid(
    frames: np.ndarray,
    pred: np.ndarray,
    gt: np.ndarray | None,
    *,
    frame_indices: Sequence[int],
    frame_names: Sequence[str],
    keyframe: int | None,
    title: str,
) -> bytes:
    """PNG: a grid of overlays (see :func:`overlay_frame`) of the chosen frames, titled with J.

    Args:
        frames: uint8 (N, H, W, 3) the chosen frames; pred, gt: bool (N, H, W) (gt may be None).
        frame_indices: the N positions in the video; frame_names: all the video's frame names.
        keyframe: the TKS keyframe position (marked in its title) or None.
    """
    plt = _pyplot()
    n = len(frame_indices)
    cols = min(4, n)
    rows = math.ceil(n / cols)
    height, width = frames.shape[1:3]
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, (3.4 * height / width + 0.6) * rows + 0.6),
                             squeeze=False)
    for ax, (k, t) in zip(axes.flat, enumerate(frame_indices)):
        ax.imshow(overlay_frame(frames[k], pred[k], None if gt is None else gt[k]))
        label = f"frame {frame_names[t]}" + (" (TKS keyframe)" if keyframe == t else "")
        if gt is not None:
            union = np.count_nonzero(pred[k] | gt[k])
            j = 1.0 if union == 0 else np.count_nonzero(pred[k] & gt[k]) / union
            label += f"\nJ={j:.2f}"
        ax.set_title(label, fontsize=8)
        ax.axis("off")
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle(title + "\nmagenta: prediction, cyan outline: ground truth", fontsize=9)
    fig.tight_layout()
    return _figure_png(fig)


def overlay_mp4(chunks: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray | None]], *, fps: float = 6.0) -> bytes:
    """An mp4 (OpenCV ``mp4v``) of :func:`overlay_frame` over every frame, from chunks of frames.

    Args:
        chunks: ``(frames uint8 (N, H, W, 3), pred bool (N, H, W), gt bool (N, H, W) or None)`` in
            video order; chunked so a long video never sits in memory whole.
        fps: playback rate (a slow rate makes short clips watchable).

    Raises:
        RuntimeError: OpenCV cannot open an mp4 writer here.
    """
    import os
    import tempfile

    import cv2

    with tempfile.TemporaryDirectory(prefix="vrshq-overlay-") as tmp:
        path = os.path.join(tmp, "overlay.mp4")  # cv2.VideoWriter needs a local file
        writer = None
        try:
            for frames, pred, gt in chunks:
                for k in range(len(frames)):
                    image = overlay_frame(frames[k], pred[k], None if gt is None else gt[k])
                    if writer is None:
                        height, width = image.shape[:2]
                        writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), float(fps), (width, height))
                        if not writer.isOpened():
                            raise RuntimeError("cv2.VideoWriter cannot open an 'mp4v' writer (OpenCV without FFmpeg?)")
                    writer.write(cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        finally:
            if writer is not None:
                writer.release()
        with open(path, "rb") as handle:
            return handle.read()
