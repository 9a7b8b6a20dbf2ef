"""The published Segmenter evaluation: resize, sliding windows, averaged logits (docs/algorithm.md: checkpoints).

What the published evaluation does with one image (Segmenter `segm/model/utils.py`, re-stated
here from reading it, not copied):

1. The data pipeline resizes the image so that its short side is `im_size` (keep aspect;
   `inference_kwargs.im_size`).
2. `inference()` upsamples it further when its short side is still below the window
   (so every window lies inside the image; nothing is padded at this level).
3. Windows of `window_size` start every `window_stride` pixels along each axis, the last
   one flush with the bottom / right border (anchors `a < L - ws`, plus `L - ws`).
4. Each window goes through the model (which itself pads to a multiple of the patch size and
   crops back); the window logits are summed into the image and divided by the number of
   windows covering each pixel.
5. The averaged logits are bilinearly resized to the original image size
   (`align_corners=False`). The published code applies a softmax after this step; this
   module returns the logits (the argmax is the same; apply `softmax(1)` for probabilities).

`model_fn` maps a `[b, 3, wh, ww]` float32 batch to `[b, n_cls, wh, ww]` logits (a torch
tensor or anything `numpy.asarray` accepts): a torch model, or an ONNX Runtime / TensorRT
runner with a fixed window-sized input.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from algm_export.core.errors import ConfigError, InputError
from algm_export.core.names import pair

ModelFn = Callable[[torch.Tensor], object]




def _resize(im: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(im.shape[-2:]) == tuple(size):
        return im
    return F.interpolate(im, size=tuple(size), mode="bilinear", align_corners=False)


def short_side_size(hw: Sequence[int], short: int) -> tuple[int, int]:
    """(H, W) with the short side set to `short`, aspect kept (rounded to the nearest pixel)."""
    h, w = int(hw[0]), int(hw[1])
    if h <= w:
        return short, max(short, int(w * short / h + 0.5))
    return max(short, int(h * short / w + 0.5)), short


def fit_window_size(hw: Sequence[int], window: tuple[int, int]) -> tuple[int, int]:
    """The published `resize(im, window_size)`: upsample (aspect kept) so no side is below the window.

    For a square window this is exactly the published rule (short side := window, long side
    truncated); an image already at least as large as the window is left as is.
    """
    h, w = int(hw[0]), int(hw[1])
    wh, ww = window
    if h >= wh and w >= ww:
        return h, w
    if wh == ww:  # the published arithmetic
        ws = wh
        return (ws, int(w / h * ws)) if h < w else (int(h / w * ws), ws)
    s = max(wh / h, ww / w)
    return max(wh, int(h * s)), max(ww, int(w * s))


def window_anchors(length: int, window: int, stride: int) -> list[int]:
    """Window starts along one axis: every `stride`, the last flush with the end (published rule)."""
    if length < window:
        raise ConfigError(f"image side {length} is smaller than the window {window}")
    return [a for a in range(0, length, stride) if a < length - window] + [length - window]


def window_plan(hw: Sequence[int], window_size, window_stride, im_size: Optional[int] = None,
                small: str = "resize") -> dict:
    """Where the windows go for an image of size `hw`: resized size and window anchors."""
    ws = pair(window_size, "window_size")
    st = pair(window_stride, "window_stride")
    size = (int(hw[0]), int(hw[1]))
    if im_size:
        size = short_side_size(size, int(im_size))
    if small == "resize":
        run = fit_window_size(size, ws)
    elif small == "pad":
        run = (max(size[0], ws[0]), max(size[1], ws[1]))
    else:
        raise ConfigError(f"small={small!r}: use 'resize' (published) or 'pad'")
    anchors = [(a, b) for a in window_anchors(run[0], ws[0], st[0]) for b in window_anchors(run[1], ws[1], st[1])]
    return {"resized": size, "run": run, "window": ws, "stride": st, "anchors": anchors}


def _as_tensor(out, like: torch.Tensor) -> torch.Tensor:
    if isinstance(out, (tuple, list)) and out and not isinstance(out[0], (int, float)):
        out = out[0]  # runners returning (logits, extras...)
    if not isinstance(out, torch.Tensor):
        out = torch.from_numpy(np.ascontiguousarray(np.asarray(out)))
    return out.to(device=like.device, dtype=torch.float32)


@torch.no_grad()
def sliding_window_logits(
    model_fn: ModelFn,
    image: torch.Tensor,
    window_size,
    window_stride,
    im_size: Optional[int] = None,
    batch_size: int = 4,
    small: str = "resize",
    on_batch: Optional[Callable[[list, torch.Tensor], None]] = None,
) -> torch.Tensor:
    """Published sliding-window inference of normalised images `[B, 3, H, W]` -> logits `[B, n_cls, H, W]`.

    window_size / window_stride: int or (H, W). im_size: short side the image is first resized
    to (None: keep the size). small: what to do when a side is below the window after that:
    "resize" (published: upsample, aspect kept) or "pad" (zero-pad bottom/right, cropped after).
    batch_size: windows per `model_fn` call. on_batch(anchors, crops): called before each batch
    (e.g. to keep the first window's input for a visualisation).
    """
    if not isinstance(image, torch.Tensor) or image.dim() not in (3, 4) or image.shape[-3] != 3:
        shape = tuple(image.shape) if hasattr(image, "shape") else type(image).__name__
        raise InputError(f"sliding_window_logits needs a [1, 3, H, W] image tensor, got {shape}")
    if image.dim() == 3:
        image = image.unsqueeze(0)
    if image.shape[0] > 1:
        return torch.cat([sliding_window_logits(model_fn, image[i:i + 1], window_size, window_stride, im_size,
                                                batch_size, small, on_batch) for i in range(image.shape[0])])
    if batch_size < 1:
        raise ConfigError(f"batch_size {batch_size} must be at least 1")
    image = image.float()
    H, W = image.shape[-2:]
    plan = window_plan((H, W), window_size, window_stride, im_size, small)
    (wh, ww), run = plan["window"], plan["run"]
    im = _resize(image, plan["resized"])
    if small == "pad" and tuple(run) != tuple(im.shape[-2:]):
        im = F.pad(im, (0, run[1] - im.shape[-1], 0, run[0] - im.shape[-2]), value=0.0)
    else:
        im = _resize(im, run)
    anchors = plan["anchors"]
    logits = count = None
    for i in range(0, len(anchors), batch_size):
        chunk = anchors[i:i + batch_size]
        crops = torch.cat([im[..., a:a + wh, b:b + ww] for a, b in chunk]).contiguous()
        if on_batch is not None:
            on_batch(chunk, crops)
        out = _as_tensor(model_fn(crops), im)
        if out.dim() != 4 or out.shape[0] != len(chunk) or tuple(out.shape[-2:]) != (wh, ww):
            raise InputError(
                f"model_fn returned {tuple(out.shape)} for a batch of {len(chunk)} windows of {wh}x{ww}; "
                f"it must return [{len(chunk)}, n_cls, {wh}, {ww}] logits"
            )
        if logits is None:
            logits = torch.zeros((out.shape[1], run[0], run[1]), dtype=torch.float32, device=im.device)
            count = torch.zeros((1, run[0], run[1]), dtype=torch.float32, device=im.device)
        for (a, b), o in zip(chunk, out):
            logits[:, a:a + wh, b:b + ww] += o
            count[:, a:a + wh, b:b + ww] += 1
    logits = (logits / count).unsqueeze(0)
    if small == "pad":
        logits = logits[..., : plan["resized"][0], : plan["resized"][1]]
    return _resize(logits, (H, W))


__all__ = ["fit_window_size", "short_side_size", "sliding_window_logits", "window_anchors", "window_plan"]
