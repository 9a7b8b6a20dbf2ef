"""The report's pictures: what merging does to the segmentation, one row per photo.

For each sample photo, in PyTorch (`runtimes.registry.torch_runner`, each setting as exported:
static with its capacities, or dynamic token mode): the baseline's segmentation, and for every
setting (every threshold of a threshold-input entry) its segmentation with its token groups drawn
over it and the pixels whose class differs from the baseline's. Class colours: the model's own
palette when its family provides one (`model.palette`), else `visualize.palette(n_cls)` of its
class count, so every family draws its own classes.

`run_pictures` returns the rows (files written to the report folder) and, per setting, the share
of pixels that agree with the baseline: the cost side of the operating-point chart.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from algm_export.artifacts import ExportFolder


@dataclass
class Column:
    """One setting of the pictures (an entry, at one threshold)."""

    name: str                         # the entry's name
    threshold: float
    layers: list
    token_mode: str                   # "static" or "dynamic"
    capacities: Optional[list]        # static: tokens kept after each step, the same for every image
    n_patches: int
    key: str = ""                     # file-name part: entry name (with the threshold when it is an input)

    @property
    def header(self) -> list[str]:
        """The column header, line by line: threshold, layers, token mode, tokens kept."""
        kept = ("tokens kept " + " / ".join(str(int(c)) for c in self.capacities) + f" of {self.n_patches}"
                if self.capacities else "tokens kept: per image (below)")
        return [f"threshold {self.threshold:.2f}", "layers " + ", ".join(map(str, self.layers)),
                f"{self.token_mode} token mode", kept]


@dataclass
class Cell:
    seg: Path                         # segmentation with the token groups drawn over it
    changed: Path                     # pixels whose class changed against the baseline
    changed_pct: float
    tokens: list                      # tokens after each step, this image


@dataclass
class Row:
    photo: str
    input: Path
    baseline: Path
    cells: list = field(default_factory=list)       # one Cell per Column
    labels: Optional[np.ndarray] = field(default=None, repr=False)   # the baseline's class map


def columns(folder: ExportFolder, model) -> list[tuple[Column, object]]:
    """The settings to draw, static and dynamic of the same threshold next to each other:
    [(Column, entry)] sorted by (threshold, layers, static first)."""
    grid = model.cfg.grid
    n = int(grid[0]) * int(grid[1])
    out = []
    for e in folder.settings:
        for t in e.thresholds:
            key = f"{e.name}.t{t:.3f}" if e.takes_threshold else e.name
            out.append((Column(e.name, float(t), list(e.layers), e.token_mode,
                               None if e.is_dynamic else list(e.capacities or []) or None, n, key), e))
    out.sort(key=lambda ce: (ce[0].threshold, ce[0].layers, ce[0].token_mode != "static", ce[0].name))
    return out


def class_palette(model, n_cls: int) -> np.ndarray:
    """The class colours: the model's own (`model.palette`, [n_cls, 3] values 0..255, as a family may
    read it from its checkpoint's dataset metadata), else `visualize.palette(n_cls)`."""
    from algm_export.tasks.visualize import palette

    own = getattr(model, "palette", None)
    if own is not None:
        try:
            arr = np.asarray(own, dtype=np.float64)
            if arr.ndim == 2 and arr.shape[0] >= n_cls and arr.shape[1] == 3 and np.isfinite(arr).all() \
                    and arr.min() >= 0 and arr.max() <= 255:
                return arr.round().astype(np.uint8)
        except (TypeError, ValueError):
            pass
    return palette(n_cls)


def _labels(out, hw) -> np.ndarray:
    """[H, W] class map of the first image of a run: its logits (at the input, or at a stride) resized
    bilinearly to `hw`, then the argmax."""
    import torch
    import torch.nn.functional as F

    lo = torch.from_numpy(np.ascontiguousarray(out.logits[:1])).float()
    if tuple(lo.shape[-2:]) != tuple(hw):
        lo = F.interpolate(lo, size=tuple(int(v) for v in hw), mode="bilinear", align_corners=False)
    return lo[0].argmax(0).numpy().astype(np.int64)


def run_pictures(folder: ExportFolder, out_dir: Path, model, n_images: int = 3) -> tuple[list[Column], list[Row]]:
    """Write the panels of `n_images` sample photos to `out_dir` (input_, seg_, merge_, changed_
    PNGs); returns the columns and the rows."""
    from algm_export.models.images import model_input, sample_images
    from algm_export.runtimes.registry import torch_runner
    from algm_export.tasks.visualize import changed_panel, panel_patch_pixels, save_png, segmentation_panel

    cfg = model.cfg
    grid, ps_model = cfg.grid, cfg.patch_size
    hw = (int(grid[0]) * ps_model, int(grid[1]) * ps_model)
    cols = columns(folder, model)
    # panels about as wide as their column on a 1200 px page (no rescaling blurs the outlines)
    ps = panel_patch_pixels(grid, max(128, min(320, 1150 // (2 + len(cols)))))
    size = (int(grid[0]) * ps, int(grid[1]) * ps)
    pal = class_palette(model, int(folder.model_info.get("n_cls") or cfg.n_cls))
    photos = sample_images(n_images)
    inputs = [(name, img, model_input(img, model)) for name, img in photos]
    rows = []
    base = torch_runner(model)
    try:
        for name, img, x in inputs:
            shown = np.asarray(_resize(img, size))
            lab = _labels(base.infer(x), hw)
            rows.append(Row(name, save_png(shown, out_dir / f"input_{name}.png"),
                            save_png(segmentation_panel(lab, None, grid, ps, pal),
                                     out_dir / f"seg_{name}_baseline.png"), labels=lab))
    finally:
        base.close()
    for col, e in cols:
        s = e.setting().with_threshold(col.threshold)
        with torch_runner(model, s, e.capacities if not e.is_dynamic else None, e.token_mode,
                          assignments=True) as r:
            for row, (name, img, x) in zip(rows, inputs):
                out = r.infer(x)
                lab = _labels(out, hw)
                seg = segmentation_panel(lab, [a[0] for a in out.assignments], grid, ps, pal)
                ch, frac = changed_panel(np.asarray(_resize(img, hw)), row.labels, lab, size)
                row.cells.append(Cell(save_png(seg, out_dir / f"merge_{name}_{col.key}.png"),
                                      save_png(ch, out_dir / f"changed_{name}_{col.key}.png"), 100.0 * frac,
                                      [int(v) for v in np.asarray(out.tokens)[0]]))
    return [c for c, _ in cols], rows


def agreement_with_baseline(cols: list[Column], rows: list[Row]) -> dict:
    """{(entry name, threshold): mean % of pixels whose class equals the baseline's} over the photos."""
    return {(c.name, round(c.threshold, 6)): float(np.mean([100.0 - r.cells[i].changed_pct for r in rows]))
            for i, c in enumerate(cols) if rows}


def tokens_per_image(cols: list[Column], rows: list[Row]) -> dict:
    """{(entry name, threshold): [tokens after the last merge, per photo]} of the dynamic columns."""
    return {(c.name, round(c.threshold, 6)): [r.cells[i].tokens[-1] for r in rows]
            for i, c in enumerate(cols) if c.token_mode == "dynamic"}


def _resize(img, hw):
    from PIL import Image

    return Image.fromarray(np.ascontiguousarray(img)).resize((int(hw[1]), int(hw[0])), Image.BILINEAR)
