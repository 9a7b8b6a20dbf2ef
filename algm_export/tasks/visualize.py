"""Pictures: colour-coded segmentations and which patches ALGM merged.

* `palette(n)`: deterministic class colours (at least 256; the ADE20K 150 classes fit).
* `colorize(labels)` / `segmentation_png(labels, path)`: class map -> RGB image / PNG file.
* `merge_panels(...)` / `merge_png(image, assignments, grid, patch_size, path)`: one panel per
  merge step. Every token that holds more than one patch (a merged CLAP window, a GBM group)
  is tinted in its own colour, with its outline drawn; patches still on their own stay plain.
  Colours are random but deterministic: a group is coloured by its lowest patch index.

Pure numpy + Pillow (no display needed).
"""

from __future__ import annotations

import math
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
    assignments: per step, an [N] map (or [1, N]) patch -> token index (spec notation).
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


__all__ = ["colorize", "group_colors", "merge_panels", "merge_png", "palette", "segmentation_png", "step_titles"]
