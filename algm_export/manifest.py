"""The export folder's `manifest.json`: what was exported, built and validated, with sha256s.

Layout of a manifest (format "algm-export/1")::

    {
      "format": "algm-export/1",
      "created": "2026-11-24T10:00:00Z",
      "model": {"source": "builtin:vit_s16_512" | "/path/checkpoint.pth",
                "checkpoint_sha256": str | null, "n_cls": int, "image_size": [H, W],
                "patch_size": int, "grid": [Gh, Gw], "num_prefix": int,
                "normalization": "vit" | "deit", "backbone": str, "decoder": str},
      "baseline": {"name": "baseline", "onnx": "baseline.onnx", "sha256": str,
                   "precision": "fp32", "onnx_fp16": ..., "sha256_fp16": ...},
      "settings": [{"name": "t0.880", "threshold": float, "window": [wh, ww],
                    "layers": [1, 5], "policy": "per_image", "capacities": [C1, C2],
                    "calibration": {"images": [...], "counts": [[...], [...]],
                                    "quantile": 1.0, "forced_merges": int},
                    "onnx": "t0.880.onnx", "sha256": str, ...}],
      "engines": [{"setting": "baseline" | name, "file": "engines/x.engine", "sha256": str,
                   "backend": "tensorrt" | "tensorrt-rtx", "backend_version": str,
                   "precision": "fp32" | "fp16", "profile": [min, opt, max],
                   "compute_capabilities": [86], "plugin_library": str | null,
                   "plugin_sha256": str | null, "build_seconds": float,
                   "layers": {"count": int, "plugin_layers": [...], "algm_nodes": int}}],
      "versions": {"algm_export": str, "torch": str, "onnx": str, ...}
    }

Every write goes through `write_json_atomic` / `atomic_path`: a temporary file in the same
folder, fsync, then `os.replace`, so an interrupted export never leaves a half-written file
under a final name, and the previous manifest stays intact until the new one is complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

from algm_export.errors import ArtifactError

MANIFEST = "manifest.json"
FORMAT = "algm-export/1"


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `final`; on success it is renamed onto `final`.

    On any exception the temporary file is removed and `final` is left untouched.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a finished artifact gets the usual mode
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def manifest_path(export_dir: str | os.PathLike) -> Path:
    return Path(export_dir) / MANIFEST


def load_manifest(export_dir: str | os.PathLike, verify: bool = False) -> dict:
    """Read `DIR/manifest.json`. With `verify`, check every listed file's sha256."""
    p = manifest_path(export_dir)
    if not p.exists():
        raise ArtifactError(
            f"{p} does not exist: {export_dir} is not an export folder. "
            "Run `algm-export export ... --out DIR` first."
        )
    try:
        data = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{p} is not valid JSON ({e}); re-run the export with --force.") from e
    if data.get("format") != FORMAT:
        raise ArtifactError(
            f"{p} has format {data.get('format')!r}, expected {FORMAT!r}; re-export with this version."
        )
    if verify:
        verify_files(export_dir, data)
    return data


def listed_files(data: dict) -> list[tuple[str, str]]:
    """(relative path, sha256) of every artifact the manifest lists."""
    out = []
    entries = [data.get("baseline") or {}] + list(data.get("settings") or [])
    for e in entries:
        for key, hkey in (("onnx", "sha256"), ("onnx_fp16", "sha256_fp16"), ("onnx_inlined", "sha256_inlined")):
            if e.get(key):
                out.append((e[key], e.get(hkey)))
    for e in data.get("engines") or []:
        out.append((e["file"], e.get("sha256")))
    return out


def verify_files(export_dir: str | os.PathLike, data: dict) -> None:
    bad = []
    for rel, digest in listed_files(data):
        p = Path(export_dir) / rel
        if not p.exists():
            bad.append(f"{rel}: missing")
        elif digest and sha256_file(p) != digest:
            bad.append(f"{rel}: sha256 does not match the manifest (file changed or corrupted)")
    if bad:
        raise ArtifactError(
            "export folder does not match its manifest:\n  " + "\n  ".join(bad)
            + f"\nRe-export into {export_dir} with --force (or rebuild the engines)."
        )


def save_manifest(export_dir: str | os.PathLike, data: dict) -> Path:
    data = dict(data)
    data["format"] = FORMAT
    p = manifest_path(export_dir)
    write_json_atomic(p, data)
    return p


def tool_versions() -> dict:
    import importlib.metadata as md

    out = {}
    for name in ("algm-export", "torch", "timm", "onnx", "onnxscript", "onnxruntime", "polygraphy",
                 "tensorrt", "tensorrt-rtx-cu13", "numpy"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out
