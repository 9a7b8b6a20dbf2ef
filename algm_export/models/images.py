"""Images in and out of the model: loading files, built-in sample photos, model input tensors.

* `load_image(path)` -> `uint8 [H, W, 3]` RGB (grey, palette, 16-bit and alpha images converted;
  EXIF orientation applied). Raises `InputError` naming the file when it cannot be read.
* `list_images(folder)` -> the image files of a folder (by extension, sorted, not recursive).
* `load_images(folder_or_files)` / `iter_images(...)` -> `(Path, array)` pairs; unreadable,
  truncated and non-image files are skipped with an `ImageSkippedWarning` naming each file,
  and `InputError` is raised when nothing readable is left.
* `sample_images(n)` -> `(name, array)` pairs of real photographs bundled with scikit-image.
* `to_model_input(img, (H, W), "vit")` -> normalised `float32 [1, 3, H, W]`: the one place an
  image becomes a model input (resize, scale, normalisation); `model_input(img, model)` at a
  model's size and normalisation; `model_inputs(images, size, norm)` for a set of images
  (a folder, files, or the sample photos), as validate, bench, the report, predict and the
  calibration take them.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

from algm_export.core.errors import ConfigError, InputError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm",
                    ".pbm", ".pnm", ".jfif", ".jp2", ".tga", ".ico")

# scikit-image's bundled photographs (no download needed). name -> (loader attribute, index or None)
SAMPLE_IMAGES: dict[str, tuple[str, Optional[int]]] = {
    "astronaut": ("astronaut", None),
    "coffee": ("coffee", None),
    "chelsea": ("chelsea", None),
    "rocket": ("rocket", None),
    "motorcycle_left": ("stereo_motorcycle", 0),
    "motorcycle_right": ("stereo_motorcycle", 1),
    "hubble_deep_field": ("hubble_deep_field", None),
    "retina": ("retina", None),
    "immunohistochemistry": ("immunohistochemistry", None),
    "camera": ("camera", None),
    "coins": ("coins", None),
}

PathLike = Union[str, os.PathLike]


class ImageSkippedWarning(UserWarning):
    """An input file was skipped because it is not a readable image."""


def to_rgb_uint8(arr: np.ndarray) -> np.ndarray:
    """Any image array (grey, RGB, RGBA; uint8/uint16/float) -> contiguous uint8 [H, W, 3]."""
    a = np.asarray(arr)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[-1] not in (1, 2, 3, 4) or min(a.shape[:2]) < 1:
        raise InputError(f"image array of shape {a.shape} is not an image (expected HxW, HxWx3 or HxWx4)")
    if a.dtype == np.uint8:
        pass
    elif a.dtype == np.bool_:
        a = a.astype(np.uint8) * 255
    elif np.issubdtype(a.dtype, np.integer):
        top = 65535.0 if a.dtype == np.uint16 or a.max(initial=0) > 255 else 255.0
        a = np.clip(a.astype(np.float64) / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
    else:
        f = a.astype(np.float64)
        if not np.isfinite(f).all():
            raise InputError("image array holds NaN or Inf values")
        scale = 255.0 if f.max(initial=0) <= 1.0 else 1.0
        a = np.clip(f * scale + 0.5, 0, 255).astype(np.uint8)
    c = a.shape[-1]
    if c in (2, 4):  # alpha: composite onto white
        rgb, alpha = a[..., :-1].astype(np.float32), a[..., -1:].astype(np.float32) / 255.0
        a = np.clip(rgb * alpha + 255.0 * (1.0 - alpha) + 0.5, 0, 255).astype(np.uint8)
        c -= 1
    if c == 1:
        a = np.repeat(a, 3, axis=-1)
    return np.ascontiguousarray(a)


def load_image(path: PathLike, data: Optional[bytes] = None) -> np.ndarray:
    """Read an image file as RGB uint8 [H, W, 3]. InputError (naming the file) when it is not readable.

    data: the file's bytes, already read (decoded instead of reading `path`, which names it in errors)."""
    import io

    from PIL import Image, ImageOps, UnidentifiedImageError

    p = Path(path)
    if data is None:
        if not p.exists():
            raise InputError(f"image {p} does not exist; check the path")
        if p.is_dir():
            raise InputError(f"{p} is a folder, not an image file")
    try:
        with Image.open(p if data is None else io.BytesIO(data)) as im:
            im = ImageOps.exif_transpose(im)
            im.load()
            mode = im.mode
            if mode in ("RGB", "L", "RGBA", "LA"):
                arr = np.asarray(im)
            elif mode.startswith("I;16") or mode in ("I", "F"):
                arr = np.asarray(im)
                if mode == "I":
                    arr = np.clip(arr, 0, 65535).astype(np.uint16)
                elif mode == "F":
                    lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
                    arr = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
            elif mode == "P" and "transparency" in im.info or mode == "PA":
                arr = np.asarray(im.convert("RGBA"))
            else:  # P, 1, CMYK, YCbCr, LAB, HSV, ...
                arr = np.asarray(im.convert("RGB"))
    except UnidentifiedImageError:
        raise InputError(f"{p} is not an image file (no image format recognised)") from None
    except Image.DecompressionBombError as e:
        raise InputError(f"{p} is too large to decode safely ({e})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:  # truncated / corrupt data
        raise InputError(f"{p} is unreadable or truncated ({type(e).__name__}: {e})") from None
    try:
        return to_rgb_uint8(arr)
    except InputError as e:
        raise InputError(f"{p}: {e}") from None


def list_images(folder: PathLike) -> list[Path]:
    """Image files (by extension, case-insensitive) directly inside `folder`, sorted by name.

    Hidden files are ignored. InputError when `folder` is not a folder.
    """
    d = Path(folder)
    if not d.is_dir():
        raise InputError(f"{d} is not a folder")
    return sorted(p for p in d.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS)


def expand_sources(sources: Union[PathLike, Sequence[PathLike]]) -> tuple[list[Path], list[str]]:
    """(files to try, input names for messages). Folders are expanded to their image files
    (other files in them: one warning); a nonexistent path or an empty folder is an InputError."""
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    files: list[Path] = []
    names: list[str] = []
    for s in sources:
        p = Path(s)
        names.append(str(p))
        if p.is_dir():
            all_files = sorted(q for q in p.iterdir() if q.is_file() and not q.name.startswith("."))
            if not all_files:
                raise InputError(f"folder {p} is empty: put image files in it or name image files directly")
            imgs = list_images(p)
            others = [q.name for q in all_files if q not in set(imgs)]
            if others:
                shown = ", ".join(others[:10]) + (f" and {len(others) - 10} more" if len(others) > 10 else "")
                warnings.warn(f"skipping {len(others)} non-image file(s) in {p}: {shown}",
                              ImageSkippedWarning, stacklevel=3)
            if not imgs:
                raise InputError(
                    f"no readable image in {p}: it holds no image files ({shown}); "
                    f"supported extensions: {' '.join(IMAGE_EXTENSIONS[:8])} ..."
                )
            files.extend(imgs)
        elif p.exists():
            files.append(p)
        else:
            raise InputError(f"image {p} does not exist; check the path")
    return files, names


def iter_images(sources: Union[PathLike, Sequence[PathLike]],
                skip_bad: bool = True) -> Iterator[tuple[Path, np.ndarray]]:
    """Yield `(path, uint8 [H, W, 3])` for every readable image of the given folders/files.

    Unreadable files: warning (skip_bad) or InputError. A nonexistent path or an empty folder is
    an InputError before anything is read; so is ending with no readable image at all.
    """
    files, names = expand_sources(sources)
    if not files:
        raise InputError("no image given")
    n_ok, bad = 0, []
    for f in files:
        try:
            img = load_image(f)
        except InputError as e:
            if not skip_bad:
                raise
            bad.append(f"{f.name} ({e})")
            warnings.warn(f"skipping {e}", ImageSkippedWarning, stacklevel=2)
            continue
        n_ok += 1
        yield f, img
    if n_ok == 0:
        where = names[0] if len(names) == 1 else ", ".join(names[:5]) + (" ..." if len(names) > 5 else "")
        raise InputError(f"no readable image in {where}: skipped " + "; ".join(bad[:5])
                         + (f"; and {len(bad) - 5} more" if len(bad) > 5 else ""))


def load_images(sources: Union[PathLike, Sequence[PathLike]], skip_bad: bool = True) -> list[tuple[Path, np.ndarray]]:
    """All readable images of the given folders/files as `(path, uint8 [H, W, 3])` (see `iter_images`)."""
    return list(iter_images(sources, skip_bad=skip_bad))


def sample_images(n: Optional[int] = None, names: Optional[Iterable[str]] = None) -> list[tuple[str, np.ndarray]]:
    """Real photographs bundled with scikit-image (no download), as `(name, uint8 [H, W, 3])`.

    Grey ones (camera, coins) are returned as RGB. Samples that cannot be loaded here are left
    out. n: at most this many (in the order of `SAMPLE_IMAGES`); names: pick these.
    """
    try:
        import skimage.data as skd
    except ImportError as e:  # pragma: no cover - scikit-image is a dependency
        raise InputError(f"sample images need scikit-image ({e}); pip install scikit-image") from None
    wanted = list(SAMPLE_IMAGES) if names is None else list(names)
    unknown = [w for w in wanted if w not in SAMPLE_IMAGES]
    if unknown:
        raise ConfigError(f"unknown sample image(s) {unknown}; choose from {list(SAMPLE_IMAGES)}")
    out: list[tuple[str, np.ndarray]] = []
    cache: dict[str, object] = {}
    for name in wanted:
        if n is not None and len(out) >= n:
            break
        attr, idx = SAMPLE_IMAGES[name]
        try:
            if attr not in cache:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    cache[attr] = getattr(skd, attr)()
            data = cache[attr]
            arr = data[idx] if idx is not None else data
            out.append((name, to_rgb_uint8(arr)))
        except Exception:  # noqa: BLE001  (missing data file, no network for a fetched one)
            continue
    if not out:
        raise InputError("no sample image could be loaded from scikit-image's bundled data")
    return out


def normalization_stats(normalization) -> dict:
    """{"mean", "std"} (0..1 units, RGB) of a normalisation name (`configs.NORMALIZATION`: "vit",
    "deit") or of such a dict itself (families that read it from their config)."""
    from algm_export.core.names import NORMALIZATION

    if isinstance(normalization, dict):
        if set(normalization) >= {"mean", "std"} and len(normalization["mean"]) == len(normalization["std"]) == 3:
            return {"mean": tuple(float(v) for v in normalization["mean"]),
                    "std": tuple(float(v) for v in normalization["std"])}
        raise ConfigError(f"normalization {normalization!r} must hold three 'mean' and three 'std' values")
    if normalization not in NORMALIZATION:
        raise ConfigError(f"unknown normalization {normalization!r}; use one of {sorted(NORMALIZATION)}")
    return NORMALIZATION[normalization]


def to_model_input(img: np.ndarray, size, normalization="vit", device=None) -> torch.Tensor:
    """uint8 [H, W, 3] (or [H, W]) -> normalised float32 [1, 3, h, w] at the model size.

    Bilinear resize (align_corners=False, no antialiasing, as the published evaluation) to
    `size` = (h, w) (None keeps the image size), /255, then (x - mean) / std of
    `normalization_stats(normalization)`.
    """
    st = normalization_stats(normalization)
    a = np.array(to_rgb_uint8(img))  # a writable copy (torch does not take read-only arrays)
    x = torch.from_numpy(a).to(device=device).permute(2, 0, 1).unsqueeze(0).float().div_(255.0)
    if size is not None:
        if isinstance(size, int):
            size = (size, size)
        size = (int(size[0]), int(size[1]))
        if tuple(x.shape[-2:]) != size:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    mean = torch.tensor(st["mean"], dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(st["std"], dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    return ((x - mean) / std).contiguous()


def model_input(img: np.ndarray, model, size=None, device=None) -> torch.Tensor:
    """`to_model_input` at `model`'s normalisation and, unless `size` is given, its input size."""
    cfg = model.cfg
    return to_model_input(img, cfg.image_size if size is None else size, cfg.normalization, device=device)


def model_inputs(images=None, size=None, normalization="vit", limit: Optional[int] = None,
                 model=None) -> list[tuple[str, torch.Tensor]]:
    """[(name, normalised [1, 3, H, W] tensor)] of `images`: a folder or image files (unreadable ones
    skipped with a warning, `load_images`), or None for the bundled sample photos; at most `limit`.
    `model`: take size and normalisation from its config."""
    if model is not None:
        size, normalization = model.cfg.image_size, model.cfg.normalization
    pairs = sample_images() if images is None else load_images(images)
    pairs = [(str(getattr(n, "name", n)), img) for n, img in pairs][: limit or None]
    return [(n, to_model_input(img, size, normalization)) for n, img in pairs]


def from_model_input(x: torch.Tensor, normalization="vit") -> np.ndarray:
    """Inverse of `to_model_input` for display: [1, 3, h, w] (or [3, h, w]) -> uint8 [h, w, 3]."""
    st = normalization_stats(normalization)
    if x.dim() == 4:
        x = x[0]
    mean = torch.tensor(st["mean"], dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(st["std"], dtype=torch.float32).view(3, 1, 1)
    img = (x.detach().float().cpu() * std + mean).clamp(0, 1).mul(255).add(0.5).to(torch.uint8)
    return np.ascontiguousarray(img.permute(1, 2, 0).numpy())


__all__ = [
    "IMAGE_EXTENSIONS", "ImageSkippedWarning", "SAMPLE_IMAGES", "expand_sources", "from_model_input", "iter_images",
    "list_images",
    "load_image", "load_images", "model_input", "model_inputs", "sample_images", "to_model_input", "to_rgb_uint8",
]
