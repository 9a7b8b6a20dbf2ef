"""Pictures: colour-coded segmentations and which patches ALGM merged.

* `palette(n)`: deterministic class colours (at least 256; the ADE20K 150 classes fit).
* `colorize(labels)` / `segmentation_png(labels, path)`: class map -> RGB image / PNG file.
* `merge_panels(...)` / `merge_png(image, assignments, grid, patch_size, path)`: one panel per
  merge step. Every token that holds more than one patch (a merged CLAP window, a GBM group)
  is tinted in its own colour, with its outline drawn; patches still on their own stay plain.
  Colours are random but deterministic: a group is coloured by its lowest patch index.
* `segmentation_panel(labels, assignments, grid)`: a class map with the token groups of an ALGM
  run drawn over it (CLAP windows outlined in black, GBM groups in white);
  `changed_panel(image, base, labels)`: the pixels whose class differs from the baseline's, in
  vermillion over a faded grey photo (readable in greyscale: dark on light).
* `speed_chart(results, path)`: measured speed-up against tokens kept, one series per backend and
  batch size, with the ideal (speed-up = FLOP ratio); `chart_style()`: the plain axes and the
  colour-blind-safe colours every chart uses (shared by `bench` and `report`); `chart_axes(figsize,
  title)`: one such chart's figure and axes, finished with its title, legend and layout.

Pure numpy + Pillow (no display needed); charts with matplotlib's Agg backend.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from algm_export.core.errors import InputError
from algm_export.artifacts import atomic_path


def palette(n: int = 256) -> np.ndarray:
    """[max(n, 256), 3] uint8 class colours, deterministic.

    The first 256 come from the bit-interleaving scheme used for PASCAL VOC label maps
    (class c gets entry c + 1, so no class is black); beyond that, golden-ratio hues.
    """
    size = max(int(n), 256)
    base = np.zeros((257, 3), dtype=np.uint8)
    for i in range(257):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        base[i] = (r, g, b)
    out = np.zeros((size, 3), dtype=np.uint8)
    out[:256] = base[1:257]
    if size > 256:
        import colorsys

        for i in range(256, size):
            h = (i * 0.6180339887) % 1.0
            out[i] = [int(255 * v) for v in colorsys.hsv_to_rgb(h, 0.55 + 0.4 * ((i * 7) % 3) / 2, 0.95)]
    return out


def group_colors(n: int, seed: int = 20240617) -> np.ndarray:
    """[n, 3] uint8 bright random colours, the same for the same n and seed."""
    rng = np.random.default_rng(seed)
    return rng.integers(48, 256, size=(max(int(n), 1), 3), dtype=np.int64).astype(np.uint8)


def colorize(labels, pal: Optional[np.ndarray] = None) -> np.ndarray:
    """Class map [H, W] (ints) -> [H, W, 3] uint8."""
    lab = _to_numpy(labels)
    if lab.ndim == 3 and lab.shape[0] == 1:
        lab = lab[0]
    if lab.ndim != 2:
        raise InputError(f"labels must be [H, W], got shape {lab.shape}")
    lab = lab.astype(np.int64)
    if lab.size and lab.min() < 0:
        raise InputError("labels must be non-negative class indices")
    pal = palette(int(lab.max(initial=0)) + 1) if pal is None else np.asarray(pal, dtype=np.uint8)
    return pal[lab % len(pal)]


def _save_png(arr: np.ndarray, path) -> Path:
    from PIL import Image

    path = Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(np.ascontiguousarray(arr)).save(tmp, format="PNG")
    return path


def segmentation_png(labels, path, image: Optional[np.ndarray] = None, alpha: float = 0.5,
                     pal: Optional[np.ndarray] = None) -> Path:
    """Write the colour-coded class map; with `image` (same size), blend it over the photo."""
    col = colorize(labels, pal)
    if image is not None:
        img = np.asarray(image)
        if img.shape[:2] != col.shape[:2]:
            img = _resize_rgb(img, col.shape[:2])
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, -1)
        col = (img[..., :3].astype(np.float32) * (1 - alpha) + col.astype(np.float32) * alpha + 0.5).astype(np.uint8)
    return _save_png(col, path)


def _to_numpy(a) -> np.ndarray:
    if hasattr(a, "detach"):
        a = a.detach().cpu().numpy()
    return np.asarray(a)


def _resize_rgb(img: np.ndarray, hw, nearest: bool = False) -> np.ndarray:
    from PIL import Image

    if tuple(img.shape[:2]) == tuple(hw):
        return img
    im = Image.fromarray(np.ascontiguousarray(img))
    im = im.resize((int(hw[1]), int(hw[0])), Image.NEAREST if nearest else Image.BILINEAR)
    return np.asarray(im)


def _title_bar(text: str, width: int, height: int = 18) -> np.ndarray:
    from PIL import Image, ImageDraw

    bar = Image.new("RGB", (width, height), (24, 24, 24))
    draw = ImageDraw.Draw(bar)
    draw.text((4, 3), text, fill=(240, 240, 240))
    return np.asarray(bar)


def merge_panels(image: np.ndarray, assignments: Sequence, grid, patch_size: int,
                 titles: Optional[Sequence[str]] = None, alpha: float = 0.55, min_side: int = 256,
                 show_input: bool = True) -> list[np.ndarray]:
    """Panels (uint8 RGB) showing the token groups after every merge step.

    image: uint8 [H, W, 3] the model saw (resized to grid * patch_size if needed).
    assignments: per step, an [N] map (or [1, N]): patch -> the index of the token that holds it.
    """
    gh, gw = int(grid[0]), int(grid[1])
    N = gh * gw
    img = np.asarray(image)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, -1)
    img = img[..., :3].astype(np.uint8)
    H, W = gh * patch_size, gw * patch_size
    img = _resize_rgb(img, (H, W))
    scale = max(1, math.ceil(min_side / max(1, min(H, W))))
    if scale > 1:
        img = _resize_rgb(img, (H * scale, W * scale))
    ps = patch_size * scale
    colors = group_colors(N)
    panels = []
    if show_input:
        panels.append(np.concatenate([_title_bar("input", img.shape[1]), img], 0))
    for i, a in enumerate(assignments):
        a = _to_numpy(a).reshape(-1).astype(np.int64)
        if a.size != N:
            raise InputError(f"assignment map of step {i + 1} has {a.size} entries for a {gh}x{gw} grid")
        counts = np.bincount(a, minlength=int(a.max(initial=0)) + 1)
        merged = counts[a] > 1                                        # [N]
        root = np.full(counts.shape, N, dtype=np.int64)
        np.minimum.at(root, a, np.arange(N))                          # lowest patch index per token
        gid = root[a].reshape(gh, gw)
        mpatch = merged.reshape(gh, gw)
        col = colors[gid % N]                                         # [gh, gw, 3]
        gid_px = np.repeat(np.repeat(gid, ps, 0), ps, 1)
        m_px = np.repeat(np.repeat(mpatch, ps, 0), ps, 1)
        col_px = np.repeat(np.repeat(col, ps, 0), ps, 1)
        out = img.astype(np.float32)
        out[m_px] = out[m_px] * (1 - alpha) + col_px[m_px].astype(np.float32) * alpha
        border = np.zeros_like(m_px)
        dx = (gid_px[:, 1:] != gid_px[:, :-1]) & (m_px[:, 1:] | m_px[:, :-1])
        dy = (gid_px[1:, :] != gid_px[:-1, :]) & (m_px[1:, :] | m_px[:-1, :])
        border[:, 1:] |= dx
        border[:, :-1] |= dx
        border[1:, :] |= dy
        border[:-1, :] |= dy
        out[border] = 255.0
        out = (out + 0.5).clip(0, 255).astype(np.uint8)
        n_tok = len(np.unique(a))
        title = titles[i] if titles is not None and i < len(titles) else f"step {i + 1}"
        title = f"{title}: {n_tok} tokens, {int(merged.sum())} patches merged"
        panels.append(np.concatenate([_title_bar(title, out.shape[1]), out], 0))
    return panels


def merge_png(image: np.ndarray, assignments: Sequence, grid, patch_size: int, path,
              titles: Optional[Sequence[str]] = None, **kwargs) -> Path:
    """Write the panels of `merge_panels` side by side (input first, then one per merge step)."""
    panels = merge_panels(image, assignments, grid, patch_size, titles, **kwargs)
    gap = 6
    h = max(p.shape[0] for p in panels)
    w = sum(p.shape[1] for p in panels) + gap * (len(panels) - 1)
    canvas = np.full((h, w, 3), 255, dtype=np.uint8)
    x = 0
    for p in panels:
        canvas[: p.shape[0], x : x + p.shape[1]] = p
        x += p.shape[1] + gap
    return _save_png(canvas, path)


def step_titles(layers: Sequence[int]) -> list[str]:
    """Panel titles for ALGM layers: the first is CLAP, the others GBM."""
    return [("CLAP" if i == 0 else "GBM") + f" (layer {l})" for i, l in enumerate(layers)]


# ----------------------------------------------------------------------------- report panels

#: changed pixels: Okabe-Ito vermillion (luminance ~120: dark on the faded photo, also in greyscale)
CHANGED_RGB = (213, 94, 0)


def panel_patch_pixels(grid, target: int = 256) -> int:
    """Pixels per patch for a panel about `target` pixels on its long side (at least 2)."""
    return max(2, int(round(target / max(1, int(grid[0]), int(grid[1])))))


def _labels_at(labels, hw) -> np.ndarray:
    lab = _to_numpy(labels)
    if lab.ndim == 3 and lab.shape[0] == 1:
        lab = lab[0]
    if lab.ndim != 2:
        raise InputError(f"labels must be [H, W], got shape {lab.shape}")
    if tuple(lab.shape) == tuple(hw):
        return lab.astype(np.int64)
    rows = (np.arange(hw[0]) * lab.shape[0] // hw[0]).clip(0, lab.shape[0] - 1)
    cols = (np.arange(hw[1]) * lab.shape[1] // hw[1]).clip(0, lab.shape[1] - 1)
    return lab[rows][:, cols].astype(np.int64)                          # nearest: classes stay classes


def _group_ids(a, grid) -> tuple[np.ndarray, np.ndarray]:
    """An assignment map (patch -> token) -> ([gh, gw] id of each patch's group: its lowest patch
    index, [gh, gw] True where the patch shares its token with others)."""
    gh, gw = int(grid[0]), int(grid[1])
    n = gh * gw
    a = _to_numpy(a).reshape(-1).astype(np.int64)
    if a.size != n:
        raise InputError(f"assignment map has {a.size} entries for a {gh}x{gw} grid")
    counts = np.bincount(a, minlength=int(a.max(initial=0)) + 1)
    root = np.full(counts.shape, n, dtype=np.int64)
    np.minimum.at(root, a, np.arange(n))
    return root[a].reshape(gh, gw), (counts[a] > 1).reshape(gh, gw)


def _outline(gid: np.ndarray, merged: np.ndarray, ps: int, width: int) -> np.ndarray:
    """[gh*ps, gw*ps] bool: one line `width` pixels wide on every border between two groups where at
    least one side is merged (patches on their own keep no outline)."""
    gh, gw = gid.shape
    out = np.zeros((gh * ps, gw * ps), dtype=bool)
    vb = np.repeat((gid[:, 1:] != gid[:, :-1]) & (merged[:, 1:] | merged[:, :-1]), ps, 0)   # [gh*ps, gw-1]
    hb = np.repeat((gid[1:, :] != gid[:-1, :]) & (merged[1:, :] | merged[:-1, :]), ps, 1)   # [gh-1, gw*ps]
    for k in range(width):
        off = k - width // 2
        out[:, np.arange(1, gw) * ps + off] |= vb
        out[np.arange(1, gh) * ps + off, :] |= hb
    return out


def segmentation_panel(labels, assignments: Optional[Sequence], grid, ps: Optional[int] = None,
                       pal: Optional[np.ndarray] = None) -> np.ndarray:
    """uint8 [gh*ps, gw*ps, 3]: the class map `labels` ([H, W] at the model's input) in class colours
    (`pal`, default `palette`), with the token groups of `assignments` (per merge step, patch -> token;
    None: none drawn) outlined: CLAP windows (the first step) in black, the groups of the last step
    that are not a CLAP window in white."""
    gh, gw = int(grid[0]), int(grid[1])
    ps = ps or panel_patch_pixels(grid)
    lab = _labels_at(labels, (gh * ps, gw * ps))
    if lab.size and lab.min() < 0:
        raise InputError("labels must be non-negative class indices")
    out = colorize(lab, pal).copy()
    if assignments:
        width = 2 if ps >= 12 else 1
        last, merged_last = _group_ids(assignments[-1], grid)
        out[_outline(last, merged_last, ps, width)] = 255
        first, merged_first = _group_ids(assignments[0], grid)
        out[_outline(first, merged_first, ps, width)] = 0
    return out


def changed_panel(image: np.ndarray, base_labels, labels, size) -> tuple[np.ndarray, float]:
    """(uint8 [h, w, 3], fraction): the pixels whose class in `labels` differs from `base_labels`
    (both [H, W] at the same size) in `CHANGED_RGB` over the photo faded to light grey, drawn at
    `size` (h, w); the fraction is counted at the labels' own resolution."""
    b, l = _to_numpy(base_labels), _to_numpy(labels)
    b = b[0] if b.ndim == 3 else b
    l = l[0] if l.ndim == 3 else l
    if b.shape != l.shape:
        raise InputError(f"label maps differ in size: {b.shape} and {l.shape}")
    changed = b != l
    frac = float(changed.mean()) if changed.size else 0.0
    img = np.asarray(image)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, -1)
    grey = _resize_rgb(img[..., :3].astype(np.uint8), size).astype(np.float32) @ np.array([0.299, 0.587, 0.114])
    faded = (175 + grey * (80 / 255)).astype(np.uint8)                 # 175..255: light, keeps the shapes
    out = np.repeat(faded[..., None], 3, -1)
    out[_labels_at(changed.astype(np.int64), size).astype(bool)] = CHANGED_RGB
    return out, frac


def save_png(arr: np.ndarray, path) -> Path:
    """Write a uint8 [H, W, 3] array as PNG (atomically)."""
    return _save_png(arr, path)


# ----------------------------------------------------------------------------- charts

#: Okabe & Ito's colour-blind-safe palette (blue, orange, bluish green, reddish purple, sky blue,
#: vermillion, yellow, black); series also differ by marker, so they survive greyscale
SERIES_COLORS = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")
SERIES_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def chart_style() -> dict:
    """matplotlib rc settings of every chart: plain numbers on the axes (no offset, no scientific
    notation), a light grid, readable type."""
    return {"axes.formatter.useoffset": False, "axes.formatter.limits": (-6, 6), "axes.grid": True,
            "grid.alpha": 0.3, "font.size": 10, "axes.titlesize": 11, "legend.fontsize": 8.5,
            "figure.dpi": 100, "savefig.dpi": 110, "svg.hashsalt": "algm-export"}


@contextmanager
def chart_axes(figsize, title: str = ""):
    """A chart's figure with one axes, drawn under `chart_style()` with matplotlib's Agg backend:
    yields (fig, ax); after the body has drawn, the title (if any), the legend and a tight layout."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with plt.rc_context(chart_style()):
        fig, ax = plt.subplots(figsize=figsize)
        yield fig, ax
        if title:
            ax.set_title(title)
        ax.legend(loc="best")
        fig.tight_layout()


def series_style(i: int) -> dict:
    return {"color": SERIES_COLORS[i % len(SERIES_COLORS)], "marker": SERIES_MARKERS[i % len(SERIES_MARKERS)]}


def tokens_kept_pct(row: dict) -> float:
    """A bench row's tokens kept after the last merge, in % of the patches (100 for the baseline)."""
    tk = row.get("tokens_kept")
    return 100.0 if not tk else 100.0 * float(tk[-1])


def series_key(row: dict) -> tuple:
    """What a bench row's speed-up is relative to: (backend, batch size, concurrency; 0 unless served)."""
    return (str(row["backend"]), int(row["batch"]), int(row.get("concurrency") or 0))


def series_label(row_or_key) -> str:
    """"onnxruntime, batch 4"; a served row: "triton, 8 clients"."""
    backend, bs, conc = row_or_key if isinstance(row_or_key, tuple) else series_key(row_or_key)
    return f"{backend}, {conc} client{'s' if conc != 1 else ''}" if conc else f"{backend}, batch {bs}"


def point_label(row: dict) -> str:
    """A short name of a bench row's setting: its threshold, `dyn` for dynamic token mode."""
    if row.get("threshold") is None:
        return "baseline"
    return f"{float(row['threshold']):.2f}" + (" dyn" if row.get("token_mode") == "dynamic" else "")


def save_chart(fig, path) -> Path:
    """Write a matplotlib figure as PNG (atomically, no software tag: the same bytes for the same
    chart) and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", metadata={"Software": None})
    plt.close(fig)
    return path


def speed_figure(results: Sequence[dict], title: str = ""):
    """The figure of `speed_chart` (drawn, not saved)."""
    groups: dict = {}
    for r in results:
        groups.setdefault(series_key(r), []).append(r)
    with chart_axes((6.4, 4.4), title) as (fig, ax):
        for i, (key, rows) in enumerate(sorted(groups.items())):
            st = series_style(i)
            for dyn in (False, True):
                pts = [r for r in rows if (r.get("token_mode") == "dynamic") == dyn]
                if not pts:
                    continue
                ax.scatter([tokens_kept_pct(r) for r in pts], [r["speedup"] for r in pts], s=46, zorder=3,
                           marker=st["marker"], edgecolors=st["color"], linewidths=1.6,
                           facecolors="white" if dyn else st["color"],
                           label=series_label(key) if not dyn or len(pts) == len(rows) else None)
        ideal = {}
        first = min(groups) if groups else None
        for r in results:  # the per-image FLOP ratio depends on the setting, not on backend or batch
            if series_key(r) == first:
                ideal.setdefault(round(tokens_kept_pct(r), 3), float(r["flop_ratio"]))
        xs = sorted(ideal)
        ax.plot(xs, [ideal[x] for x in xs], "--", color="#555555", lw=1.2, zorder=2,
                label="ideal: speed-up = FLOP ratio")
        ax.axhline(1.0, color="#999999", lw=0.8, zorder=1)
        if groups:
            for r in sorted(groups.items())[0][1]:
                if r.get("threshold") is not None:
                    ax.annotate(point_label(r), (tokens_kept_pct(r), r["speedup"]), textcoords="offset points",
                                xytext=(5, 4), fontsize=8)
        ax.set_xlabel("tokens kept after the last merge (% of patches)")
        ax.set_ylabel("speed-up over the baseline (x)")
        if any(r.get("token_mode") == "dynamic" for r in results):
            ax.scatter([], [], marker="o", facecolors="white", edgecolors="#333333",
                       label="hollow: dynamic token mode")
    return fig


def speed_chart(results: Sequence[dict], path, title: str = "") -> Path:
    """Speed-up over the baseline against tokens kept after the last merge: one series per (backend,
    batch size), markers only (settings are not a sequence), filled for static and hollow for dynamic
    token mode; the ideal (speed-up = FLOP ratio, per image, at the smallest batch) as a dashed line."""
    return save_chart(speed_figure(results, title), path)


__all__ = ["CHANGED_RGB", "changed_panel", "chart_axes", "chart_style", "colorize", "group_colors", "merge_panels", "merge_png",
           "palette", "panel_patch_pixels", "point_label", "save_chart", "save_png", "segmentation_panel",
           "segmentation_png", "series_key", "series_label", "series_style", "speed_chart", "speed_figure",
           "step_titles", "tokens_kept_pct"]
