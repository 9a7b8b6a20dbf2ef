"""The report's charts (matplotlib, Agg), each answering one question:

* `speed_chart` (shared with `bench`, in `tasks.visualize`): how much faster, for how many tokens
  kept, per backend and batch size, against the ideal (speed-up = FLOP ratio)?
* `operating_point_chart`: what does each setting cost for what it saves? Speed-up against the
  segmentation's agreement with the baseline (or the mIoU, when validated with labels), one
  point per setting: the operating-point choice.
* `token_histogram`: in dynamic token mode, how many tokens do the images keep, against the
  static capacity every image pays for?

Plain axes with units (no offset notation), Okabe-Ito colours with distinct markers and hatches.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence


def _key(name: str, threshold) -> tuple:
    return (name, None if threshold is None else round(float(threshold), 6))


def operating_points(results: Sequence[dict], cost: dict) -> dict:
    """{backend: [row]} at each backend's smallest batch (served: fewest clients), for the rows whose
    (setting, threshold) has a cost value (`cost`: {(name, threshold or None): value})."""
    from algm_export.tasks.visualize import series_key

    out: dict = {}
    smallest: dict = {}
    for r in results:
        k = series_key(r)
        smallest[k[0]] = min(k, smallest.get(k[0], k))
    for r in results:
        if series_key(r) != smallest[r["backend"]]:
            continue
        k = _key(r["setting"], None if r["setting"] == "baseline" else r.get("threshold"))
        if k in cost:
            out.setdefault(r["backend"], []).append(r)
    return out


def operating_point_chart(results: Sequence[dict], cost: dict, y_label: str, path: Path,
                          title: str = "") -> Optional[Path]:
    """Speed-up (x) against `cost` (y: {(setting, threshold or None): value in %}), one point per
    setting and backend (at its smallest batch); None when no row has a value."""
    from algm_export.tasks.visualize import save_chart

    fig = operating_point_figure(results, cost, y_label, title)
    return None if fig is None else save_chart(fig, path)


def operating_point_figure(results: Sequence[dict], cost: dict, y_label: str, title: str = ""):
    """The figure of `operating_point_chart` (None without points)."""
    from algm_export.tasks.visualize import chart_axes, point_label, series_label, series_style

    pts = operating_points(results, cost)
    if not pts:
        return None
    with chart_axes((6.4, 4.4), title) as (fig, ax):
        for i, (backend, rows) in enumerate(sorted(pts.items())):
            st = series_style(i)
            for dyn in (False, True):
                sel = [r for r in rows if (r.get("token_mode") == "dynamic") == dyn]
                if sel:
                    ax.scatter([r["speedup"] for r in sel],
                               [cost[_key(r["setting"], None if r["setting"] == "baseline" else r["threshold"])]
                                for r in sel], s=50, marker=st["marker"], edgecolors=st["color"], linewidths=1.6,
                               facecolors="white" if dyn else st["color"], zorder=3,
                               label=None if dyn and len(sel) < len(rows) else series_label(rows[0]))
            if i == 0:
                for r in rows:
                    y = cost[_key(r["setting"], None if r["setting"] == "baseline" else r["threshold"])]
                    ax.annotate(point_label(r), (r["speedup"], y), textcoords="offset points", xytext=(5, 4),
                                fontsize=8)
        ax.axvline(1.0, color="#999999", lw=0.8, zorder=1)
        if any(r.get("token_mode") == "dynamic" for rows in pts.values() for r in rows):
            ax.scatter([], [], marker="o", facecolors="white", edgecolors="#333333",
                       label="hollow: dynamic token mode")
        ax.set_xlabel("speed-up over the baseline (x)")
        ax.set_ylabel(y_label)
        lo = min(cost[k] for k in cost)
        if lo > 90:  # keep small differences visible, never a range below 0.5 points
            ax.set_ylim(max(0.0, min(lo - 0.1 * (100 - lo), 99.5)) if lo < 100 else 99.5, 100.05)
    return fig


def token_histogram(counts: dict, n_patches: int, path: Path, static_capacity: Optional[dict] = None,
                    title: str = "") -> Optional[Path]:
    """Histogram of the tokens each image keeps after the last merge, per dynamic setting
    (`counts`: {label: [count per image]}), with the static capacity of the same threshold
    (`static_capacity`: {label: capacity}, e.g. {"0.88 static": 51}) and the patch count N as
    vertical lines; None without counts."""
    from algm_export.tasks.visualize import save_chart

    fig = token_histogram_figure(counts, n_patches, static_capacity, title)
    return None if fig is None else save_chart(fig, path)


def token_histogram_figure(counts: dict, n_patches: int, static_capacity: Optional[dict] = None, title: str = ""):
    """The figure of `token_histogram` (None without counts)."""
    import numpy as np

    from algm_export.tasks.visualize import chart_axes, series_style

    counts = {k: [int(v) for v in vs] for k, vs in counts.items() if vs}
    if not counts:
        return None
    hatches = ("//", "\\\\", "xx", "..", "oo", "--")
    allv = [v for vs in counts.values() for v in vs] + list((static_capacity or {}).values()) + [n_patches]
    lo, hi = min(allv), max(allv)
    step = max(1, int(np.ceil((hi - lo + 1) / 40)))
    bins = np.arange(lo - 0.5 * step, hi + 1.5 * step, step)
    with chart_axes((6.4, 4.0), title) as (fig, ax):
        for i, (label, vs) in enumerate(counts.items()):
            st = series_style(i)
            ax.hist(vs, bins=bins, histtype="stepfilled", alpha=0.55, color=st["color"], edgecolor="black",
                    hatch=hatches[i % len(hatches)], label=f"{label} ({len(vs)} images, mean {np.mean(vs):.0f})")
        for i, (label, cap) in enumerate((static_capacity or {}).items()):
            ax.axvline(cap, color=series_style(len(counts) + i)["color"], ls="--", lw=1.8,
                       label=f"{label}: {cap} tokens, every image")
        ax.axvline(n_patches, color="black", ls=":", lw=1.4, label=f"no merging: {n_patches} patches")
        ax.set_xlabel("tokens after the last merge, per image")
        ax.set_ylabel("images")
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    return fig
