"""`predict` over an image collection: inputs, output names, safe writes, resume, the run log.

Inputs (`collect_items`): image files, folders (recursively: image files by extension, hidden
files and folders left out), globs (`'photos/**/*.jpg'`, quoted so the shell leaves them alone),
`sample:NAME` / `sample:all`, and a list file (`--list FILE`: one path per line, blank lines and
`#` comments ignored, relative paths taken from the list file's folder). Every input gets a
name: its path relative to the folder common to all inputs (a folder argument counts as itself,
a file as its folder), without the extension, so `DIR/a/x.png` and `DIR/b/x.png` become `a/x`
and `b/x` in the output folder and never clash. Two files that still map to one name (`x.png`
and `x.jpg`) get `x` and `x_2`, in input order.

Per image NAME, into the output folder (`output_paths`):

* `NAME_labels.png`  class ids: 8-bit for up to 256 classes, 16-bit above;
* `NAME_seg.png`     colour-coded segmentation (`--no-seg` leaves it out);
* `NAME_merge.png`   the merge picture (torch backend with ALGM; `--no-merge` leaves it out);
* `NAME_tokens.json` token counts, timings, the input's sha256 and the run key. Written last: it
  marks the image as finished.

Every file is written through a temporary file in its folder that is renamed onto the name when
complete, so a killed run leaves finished files and temporaries (`.NAME.*.partial`), never a
partial file under a final name; the next run in that folder removes the temporaries.

Resume: an image is skipped when its `NAME_tokens.json` records the same run key (model, ALGM
setting, backend, exported file, sliding-window choice: `run_key`) and the same input sha256, and
every output file the run asks for is there (`finished`). `--overwrite` redoes every image.

The run log: `results.jsonl`, one JSON line per image as it finishes (`status` done, skipped
or failed; input, name, sha256, size, token counts, milliseconds, backend, outputs, error), in
the order images finish; `run.json` when the run completes (removed when a run starts): counts
(done, skipped, failed), seconds, images/s.
One run at a time writes to an output folder (the folder lock, as for export folders).
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import socket
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence, Union

import numpy as np

from algm_export.core.errors import AlgmError, InputError

SAMPLE_PREFIX = "sample:"
RESULTS = "results.jsonl"
SUMMARY = "run.json"
KEY_FORMAT = "algm-export-predict/1"
SUFFIXES = {"labels": "_labels.png", "seg": "_seg.png", "merge": "_merge.png", "tokens": "_tokens.json"}
GLOB_CHARS = set("*?[")


@dataclass(frozen=True)
class Item:
    """One image of a collection: its place in the input order, output name (`a/x`) and source
    (a path, or `sample:NAME`)."""
    index: int
    name: str
    source: str


# ----------------------------------------------------------------------------- inputs

def _image_files_under(folder: Path) -> tuple[list[Path], list[str]]:
    """(image files under `folder`, recursively and sorted; names of the other files)."""
    from algm_export.models.images import IMAGE_EXTENSIONS

    files, others = [], []
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for n in sorted(names):
            if n.startswith("."):
                continue
            p = Path(root) / n
            if p.is_file():  # not a pipe or a socket, which would block or fail the read
                (files if p.suffix.lower() in IMAGE_EXTENSIONS else others).append(p)
    files.sort(key=lambda f: f.relative_to(folder).parts)   # a/deep/x before a/x: as `find | sort`
    return files, sorted(str(Path(o).relative_to(folder)) for o in others)


def _folder_files(folder: Path) -> list[Path]:
    files, others = _image_files_under(folder)
    if not files and not others:
        raise InputError(f"folder {folder} is empty: put image files in it or name image files directly")
    if others:
        shown = ", ".join(others[:10]) + (f" and {len(others) - 10} more" if len(others) > 10 else "")
        if not files:
            from algm_export.models.images import IMAGE_EXTENSIONS

            raise InputError(f"no readable image in {folder}: it holds no image files ({shown}); "
                             f"supported extensions: {' '.join(IMAGE_EXTENSIONS[:8])} ...")
        from algm_export.models.images import ImageSkippedWarning

        warnings.warn(f"skipping {len(others)} non-image file(s) in {folder}: {shown}", ImageSkippedWarning,
                      stacklevel=3)
    return files


def _glob_files(pattern: str) -> list[Path]:
    from algm_export.models.images import IMAGE_EXTENSIONS

    hits = [Path(p) for p in sorted(glob.glob(pattern, recursive=True))]
    files = [p for p in hits if not p.is_dir() and p.suffix.lower() in IMAGE_EXTENSIONS]
    if not files:
        raise InputError(f"{pattern} matches no image file; check the pattern (quote it so the shell does not "
                         "expand it)")
    return files


def read_list(path: Union[str, os.PathLike]) -> list[str]:
    """The paths a list file names (one per line; blank lines and `# comments` ignored), relative
    ones resolved from the list file's folder."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"--list {p}: no such file; give a text file with one image path per line") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"--list {p} cannot be read ({type(e).__name__}: {e}); give a UTF-8 text file with one "
                         "image path per line") from None
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            q = Path(line).expanduser()
            out.append(str(q if q.is_absolute() else p.parent / q))
    if not out:
        raise InputError(f"--list {p} names no image; write one image path per line")
    return out


def _safe_part(part: str) -> str:
    safe = "".join(c if c.isalnum() or c in "-_.+" else "_" for c in part).lstrip(".")
    return safe or "image"


def _unique(name: str, used: set) -> str:
    out, i = name, 2
    while out in used:
        out, i = f"{name}_{i}", i + 1
    used.add(out)
    return out


def collect_items(specs: Sequence[Union[str, os.PathLike]] = (), list_file: Optional[Union[str, os.PathLike]] = None,
                  order: Optional[Callable[[Item], Any]] = None) -> list[Item]:
    """The collection to segment (see the module docstring for the rules). Paths are checked before
    anything is read: InputError for a missing path on the command line, an empty folder, a glob
    without a match; a missing file named in a list file becomes a failed image of the run instead.

    order: a sort key over the items (e.g. `image_pixels`, so that images of similar cost go to
    the workers together); the default keeps the input order. Output names do not depend on it."""
    from algm_export.models.images import SAMPLE_IMAGES

    specs = [str(s) for s in specs]
    listed = read_list(list_file) if list_file is not None else []
    if not specs and not listed:
        raise InputError("no image given: name image files, folders or globs, --list FILE, "
                         "or sample:all for the built-in photos")
    samples: list[str] = []
    found: list[tuple[Path, Path]] = []        # (file, the root its name is taken from)
    roots: list[Path] = []

    def add_path(s: str, from_list: bool) -> None:
        p = Path(s).expanduser()
        if p.is_dir():
            root = Path(os.path.abspath(p))
            roots.append(root)
            found.extend((f, root) for f in _folder_files(p))
        elif p.exists() or from_list and not (GLOB_CHARS & set(s)):
            root = Path(os.path.abspath(p)).parent
            roots.append(root)
            found.append((p, root))
        elif GLOB_CHARS & set(s):
            for f in _glob_files(s):
                root = Path(os.path.abspath(f)).parent
                roots.append(root)
                found.append((f, root))
        else:
            raise InputError(f"image {p} does not exist; check the path")

    for s in specs:
        if s.startswith(SAMPLE_PREFIX):
            which = s[len(SAMPLE_PREFIX):]
            if which in ("all", "*", ""):
                samples.extend(SAMPLE_IMAGES)
            elif which in SAMPLE_IMAGES:
                samples.append(which)
            else:
                raise InputError(f"unknown sample image {which!r}; choose from sample:all or "
                                 + ", ".join(f"sample:{n}" for n in SAMPLE_IMAGES))
        else:
            add_path(s, from_list=False)
    for s in listed:
        add_path(s, from_list=True)

    base = Path(os.path.commonpath([str(r) for r in roots])) if roots else None
    items: list[Item] = []
    used: set = set()
    seen: set = set()
    for name in dict.fromkeys(samples):
        items.append(Item(len(items), _unique(_safe_part(name), used), f"{SAMPLE_PREFIX}{name}"))
    for f, _root in found:
        key = os.path.abspath(f)
        if key in seen:
            continue
        seen.add(key)
        rel = Path(key).relative_to(base).with_suffix("")
        name = "/".join(_safe_part(part) for part in rel.parts)
        items.append(Item(len(items), _unique(name, used), str(f)))
    if order is not None:
        items.sort(key=order)
    return items


def image_pixels(item: Item) -> int:
    """A sort key for `collect_items(order=...)`: the image's pixel count from its header (0 when it
    cannot be read, a sample photo included). In dynamic token mode a batch costs what its
    largest image costs, so grouping images of similar size keeps batches even."""
    if item.source.startswith(SAMPLE_PREFIX):
        return 0
    try:
        from PIL import Image

        with Image.open(item.source) as im:
            return int(im.size[0] * im.size[1])
    except Exception:  # noqa: BLE001  (unreadable: it fails, recorded, when its turn comes)
        return 0


# ----------------------------------------------------------------------------- reading one image

def read_payload(item: Item) -> tuple[Any, str]:
    """(the file's bytes, or the pixels of a sample photo; their sha256). InputError for a file that
    cannot be read."""
    from algm_export.models.images import sample_images

    if item.source.startswith(SAMPLE_PREFIX):
        img = sample_images(names=[item.source[len(SAMPLE_PREFIX):]])[0][1]
        h = hashlib.sha256(f"{img.shape}".encode())
        h.update(np.ascontiguousarray(img).tobytes())
        return img, h.hexdigest()
    data = read_bytes(item.source)
    return data, hashlib.sha256(data).hexdigest()


def decode_item(item: Item, payload: Any) -> np.ndarray:
    """uint8 [H, W, 3] of what `read_payload` returned; InputError for bytes that are no image."""
    from algm_export.models.images import load_image

    if isinstance(payload, np.ndarray):
        return payload
    return load_image(item.source, data=payload)


def read_bytes(path: str) -> bytes:
    p = Path(path)
    try:
        with open(p, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise InputError(f"image {p} does not exist; check the path") from None
    except IsADirectoryError:
        raise InputError(f"{p} is a folder, not an image file") from None
    except OSError as e:
        raise InputError(f"{p} cannot be read ({e.strerror or e}); check its permissions") from None


# ----------------------------------------------------------------------------- outputs

def output_paths(out: Union[str, os.PathLike], name: str, kinds: Iterable[str]) -> dict[str, Path]:
    return {k: Path(out) / f"{name}{SUFFIXES[k]}" for k in kinds}


def write_labels(labels: np.ndarray, path: Union[str, os.PathLike], n_cls: int) -> Path:
    """`NAME_labels.png`: the class id of every pixel, 8-bit up to 256 classes, 16-bit above
    (greyscale PNG; `np.asarray(PIL.Image.open(path))` gives the ids back)."""
    from PIL import Image

    from algm_export.artifacts import atomic_path

    if n_cls > 65536:
        raise InputError(f"{n_cls} classes do not fit a 16-bit label map")
    arr = np.ascontiguousarray(labels, dtype=np.uint8 if n_cls <= 256 else np.uint16)
    with atomic_path(path) as tmp:
        Image.fromarray(arr).save(tmp, format="PNG")
    return Path(path)


def remove_partials(out: Union[str, os.PathLike]) -> int:
    """Remove the temporaries (`.NAME.*.partial`) a killed run left under `out`; how many."""
    n = 0
    for root, _dirs, names in os.walk(out):
        for fname in names:
            if fname.startswith(".") and fname.endswith(".partial"):
                try:
                    os.unlink(os.path.join(root, fname))
                    n += 1
                except FileNotFoundError:
                    pass
    return n


def finished(out: Union[str, os.PathLike], item: Item, sha256: str, key: str,
             kinds: Iterable[str]) -> Optional[dict]:
    """The `NAME_tokens.json` of an image whose outputs are complete for this run (same run key,
    same input sha256, every file of `kinds` there), else None."""
    paths = output_paths(out, item.name, set(kinds) | {"tokens"})
    try:
        data = json.loads(paths["tokens"].read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("run_key") != key or data.get("input_sha256") != sha256:
        return None
    if not all(p.is_file() for p in paths.values()):
        return None
    return data


def digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def run_key(model_identity: Any, setting, backend: str, engine_sha256: Optional[str], sliding: bool) -> str:
    """What an image's outputs depend on: the model (its files' sha256, or the built-in's name), the
    ALGM setting (None: no merging), the backend and the exported file it runs, and `--sliding`."""
    return digest({"format": KEY_FORMAT, "model": model_identity,
                   "setting": None if setting is None else setting.to_dict(), "backend": backend,
                   "engine_sha256": engine_sha256, "sliding": bool(sliding)})[:24]


def model_identity(model) -> Any:
    """The model part of the run key: the sha256 of the files it was read from, the built-in's name,
    or (a model built in memory) the sha256 of its weights."""
    from algm_export.artifacts import sha256_file

    files = getattr(model, "source_files", None)
    if files:
        return {role: sha256_file(p) for role, p in sorted(files.items())}
    src = getattr(model, "source", None)
    if isinstance(src, str) and src.startswith("builtin:"):
        return src
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


# ----------------------------------------------------------------------------- the run log

def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def failure(item: Item, error: BaseException, sha256: Optional[str] = None, backend: Optional[str] = None) -> dict:
    msg = str(error) if isinstance(error, AlgmError) else f"{type(error).__name__}: {error}"
    return {"index": item.index, "input": item.source, "name": item.name, "status": "failed", "sha256": sha256,
            "error": " ".join(msg.split())[:2000], "backend": backend, "worker": worker_name()}


class ResultsLog:
    """`results.jsonl` of the output folder, started afresh for the run; one line per image as it
    finishes, each written with a single `write` on a file opened for appending (a killed run
    leaves whole lines)."""

    def __init__(self, out: Union[str, os.PathLike]):
        self.path = Path(out) / RESULTS
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND | getattr(os, "O_CLOEXEC", 0),
                          0o666)
        self.counts = {"done": 0, "skipped": 0, "failed": 0}

    def add(self, rec: dict) -> None:
        line = (json.dumps(rec, sort_keys=False, default=str) + "\n").encode()
        os.write(self.fd, line)
        self.counts[rec["status"]] = self.counts.get(rec["status"], 0) + 1

    def close(self) -> None:
        if self.fd is not None:
            os.fsync(self.fd)
            os.close(self.fd)
            self.fd = None


class Progress:
    """The progress bar: images/s and the time left over the images this run segments (skipped
    ones leave the total), with skipped and failed counts beside it."""

    def __init__(self, total: int, enabled: bool = True):
        from tqdm import tqdm

        self.bar = tqdm(total=total, unit="img", disable=not enabled or total < 2, dynamic_ncols=True, leave=False,
                        smoothing=0.1)
        self.skipped = self.failed = 0
        self.started = False

    def update(self, rec: dict) -> None:
        if not self.started and not self.bar.disable:   # the clock starts with the first image's work
            self.started = True                           # (not with a cluster's start)
            self.bar.start_t = self.bar.last_print_t = time.time() - rec.get("total_ms", 0.0) / 1000
        status = rec.get("status")
        if status == "skipped":
            self.skipped += 1
            self.bar.total = max(0, self.bar.total - 1)
        else:
            self.failed += status == "failed"
            self.bar.update(1)
        extra = [f"skipped {self.skipped}"] if self.skipped else []
        extra += [f"failed {self.failed}"] if self.failed else []
        self.bar.set_postfix_str(", ".join(extra), refresh=True)

    def close(self) -> None:
        self.bar.close()


def write_summary(out: Union[str, os.PathLike], summary: dict) -> Path:
    from algm_export.artifacts import write_json_atomic

    path = Path(out) / SUMMARY
    write_json_atomic(path, summary)
    return path


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


__all__ = ["Item", "Progress", "RESULTS", "ResultsLog", "SUFFIXES", "SUMMARY", "collect_items", "decode_item",
           "failure", "finished", "image_pixels", "model_identity", "output_paths", "read_list", "read_payload",
           "remove_partials", "run_key", "write_labels", "write_summary"]
