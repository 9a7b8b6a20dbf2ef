"""The export folder's `manifest.json`: what was exported, built and validated, with sha256s.

Layout of a manifest (format "algm-export/1")::

    {
      "format": "algm-export/1",
      "created": "2026-11-24T10:00:00Z",
      "model": {"family": "segmenter" | "setr" | "segvit" | "eva02",
                "source": "builtin:vit_s16_512" | "/path/checkpoint.pth" | "/path/mmseg.pth",
                "config_file": "/path/config.py" | null, "config_sha256": str | null,
                "checkpoint_sha256": str | null, "n_cls": int, "image_size": [H, W],
                "files": {"checkpoint": {"path": str, "sha256": str}, "variant" | "config": {...}},
                "patch_size": int, "grid": [Gh, Gw], "num_prefix": int,
                "normalization": "vit" | "deit" | {"mean": [..], "std": [..]}, "backbone": str, "decoder": str},
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
      "versions": {"algm_export": str, "torch": str, "onnx": str, ...},
      "data_files": [{"path": "weights.bin", "sha256": str, "bytes": int}],
      "batch": null | 1
    }

`batch` (optional): null or absent for graphs with a dynamic batch axis, 1 for graphs exported for
one image per run (`export --batch 1`): runners split larger batches, engines get the profile 1,1,1.

`data_files` (optional): the ONNX external-data files of the folder (`export --external-data`,
automatic for models above 2 GiB): every entry's graph keeps its large tensors there (an entry's
`external_data` lists the files its graphs point into). Each is sha256-checked like every listed
file, and a graph may only point into files listed here (`algm_export.artifacts.external`).

Every write goes through `write_json_atomic` / `atomic_path`: a temporary file in the same
folder, fsync, then `os.replace`, so an interrupted export never leaves a half-written file
under a final name, and the previous manifest stays intact until the new one is complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from algm_export.core.errors import ArtifactError
from algm_export.core.names import FIXED_BATCHES

MANIFEST = "manifest.json"
FORMAT = "algm-export/1"
REEXPORT = "re-export the folder (`algm-export export ... --out DIR --force`) or restore its manifest.json"


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


# ----------------------------------------------------------------------------- names and paths

_TOKEN = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}")


def is_plain_name(name: Any) -> bool:
    """A file-name-safe token: letters, digits, `.`, `_`, `-`; not starting with `.`; <= 128 chars."""
    return isinstance(name, str) and _TOKEN.fullmatch(name) is not None


def is_plain_relpath(rel: Any) -> bool:
    """Plain names joined by `/`: no `..`, no absolute path, no backslash or NUL, no empty part."""
    return (isinstance(rel, str) and 0 < len(rel) <= 1024
            and all(is_plain_name(part) for part in rel.split("/")))


def resolve_inside(export_dir: str | os.PathLike, rel: Any, what: str, fix: str = REEXPORT) -> Path:
    """The real path of `rel` inside `export_dir`; ArtifactError when it is not a plain relative
    path or leads out of the folder (through `..` or a symlink). Every path taken from a manifest,
    and every output path built from one, goes through here before it is read or written."""
    if not is_plain_relpath(rel):
        raise ArtifactError(
            f"{rel!r} ({what}) is not a plain relative path inside the export folder (names of "
            f"letters, digits, '.', '_', '-' joined by '/'; no '..', no absolute path, no backslash); {fix}")
    root = Path(export_dir).resolve()
    real = (root / rel).resolve()
    if real == root or root not in real.parents:
        raise ArtifactError(
            f"{rel!r} ({what}) leads out of the export folder {root} (a symlink points to {real}); "
            "replace the symlink by the file itself or re-export")
    return real


# ----------------------------------------------------------------------------- schema

@dataclass(frozen=True)
class Rule:
    """One kind of value: `what` for messages ("an integer"), `many` for lists of them."""

    what: str
    many: str
    ok: Callable[[Any], bool]


@dataclass(frozen=True)
class ListOf:
    item: Any                       # a Rule or a schema dict
    length: Optional[int] = None
    min_length: int = 0


@dataclass(frozen=True)
class Nullable:
    rule: Any


def _int(lo: int, hi: int) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


STR = Rule("a string", "strings", lambda v: isinstance(v, str) and len(v) <= 100_000)
BOOL = Rule("true or false", "booleans", lambda v: isinstance(v, bool))
NUM = Rule("a finite number", "finite numbers",
           lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v))
COUNT = Rule("an integer in [0, 2^31)", "integers in [0, 2^31)", _int(0, 2**31 - 1))
COUNT_BYTES = Rule("an integer in [0, 2^53)", "integers in [0, 2^53)", _int(0, 2**53))
SIZE = Rule("an integer in [1, 8192]", "integers in [1, 8192]", _int(1, 8192))
SHA256 = Rule("a sha256 (64 hex digits)", "sha256s",
              lambda v: isinstance(v, str) and re.fullmatch(r"[0-9a-f]{64}", v) is not None)
NAME = Rule("a plain name (letters, digits, '.', '_', '-', not starting with '.'; output files are named after it)",
            "plain names", is_plain_name)
PATH = Rule("a plain relative path inside the export folder", "plain relative paths", is_plain_relpath)
DICT = Rule("an object", "objects", lambda v: isinstance(v, dict))
BATCH = Rule(f"one of {list(FIXED_BATCHES)} (the images each graph takes per run) or null (a dynamic batch)",
             "fixed batches", lambda v: isinstance(v, int) and not isinstance(v, bool) and v in FIXED_BATCHES)


def _is_norm(v) -> bool:
    def three(x):
        return isinstance(x, (list, tuple)) and len(x) == 3 and all(
            isinstance(e, (int, float)) and not isinstance(e, bool) and math.isfinite(e) for e in x)

    return (isinstance(v, str) and len(v) <= 100) or (
        isinstance(v, dict) and set(v) == {"mean", "std"} and three(v["mean"]) and three(v["std"]))


def _is_source_files(v) -> bool:
    return isinstance(v, dict) and 0 < len(v) <= 16 and all(
        is_plain_name(role) and isinstance(rec, dict) and set(rec) == {"path", "sha256"}
        and isinstance(rec["path"], str) and len(rec["path"]) <= 4096
        and isinstance(rec["sha256"], str) and re.fullmatch(r"[0-9a-f]{64}", rec["sha256"]) is not None
        for role, rec in v.items())


SOURCE_FILES = Rule('an object {role: {"path": str, "sha256": sha256}} (the files the model was read from)',
                    "objects of source files", _is_source_files)
NORM = Rule("a normalisation name or {\"mean\": [3 numbers], \"std\": [3 numbers]}", "normalisations", _is_norm)

# key: (rule, required). Keys not listed are kept but never read as names or paths.
MODEL_SCHEMA = {
    "source": (STR, True), "n_cls": (SIZE, True), "image_size": (ListOf(SIZE, 2), True),
    "backbone": (STR, True), "decoder": (STR, True),
    "checkpoint_sha256": (Nullable(SHA256), False), "variant_sha256": (Nullable(SHA256), False),
    "patch_size": (SIZE, False), "grid": (ListOf(SIZE, 2), False), "num_prefix": (COUNT, False),
    "n_layers": (SIZE, False), "normalization": (NORM, False), "config": (DICT, False),
    "family": (STR, False), "config_file": (Nullable(STR), False), "config_sha256": (Nullable(SHA256), False),
    "files": (SOURCE_FILES, False),
}
ENTRY_SCHEMA = {
    "name": (NAME, True), "onnx": (PATH, True), "sha256": (SHA256, True), "precision": (STR, False),
    "onnx_fp16": (PATH, False), "sha256_fp16": (SHA256, False),
    "onnx_inlined": (PATH, False), "sha256_inlined": (SHA256, False),
    "tensorrt_ready": (BOOL, False), "tensorrt_problems": (ListOf(STR), False), "algm_nodes": (COUNT, False),
    "external_data": (ListOf(PATH), False),
}
DATA_FILE_SCHEMA = {"path": (PATH, True), "sha256": (SHA256, True), "bytes": (COUNT_BYTES, False)}
SETTING_SCHEMA = {
    **ENTRY_SCHEMA, "threshold": (NUM, True), "window": (ListOf(SIZE, 2), True),
    "layers": (ListOf(SIZE, min_length=1), True), "capacities": (Nullable(ListOf(COUNT, min_length=1)), True),
    "policy": (STR, False), "calibration": (Nullable(DICT), False),
    "token_mode": (STR, False), "threshold_input": (BOOL, False), "thresholds": (ListOf(NUM), False),
}
ENGINE_SCHEMA = {
    "setting": (NAME, True), "file": (PATH, True), "sha256": (SHA256, True), "backend": (STR, True),
    "precision": (STR, True), "backend_version": (Nullable(STR), False),
    "plugin_library": (Nullable(PATH), False), "plugin_sha256": (Nullable(SHA256), False),
    "compute_capabilities": (ListOf(COUNT), False), "profile": (ListOf(SIZE, 3), False),
    "build_seconds": (Nullable(NUM), False), "onnx": (PATH, False), "onnx_sha256": (SHA256, False),
    "bytes": (COUNT_BYTES, False),
}
MANIFEST_SCHEMA = {
    "format": (STR, True), "created": (STR, False), "model": (MODEL_SCHEMA, True),
    "baseline": (ENTRY_SCHEMA, True), "settings": (ListOf(SETTING_SCHEMA), True),
    "engines": (ListOf(ENGINE_SCHEMA), False), "versions": (DICT, False),
    "data_files": (ListOf(DATA_FILE_SCHEMA), False),
    "batch": (Nullable(BATCH), False),
}
# (path key, sha256 key): a listed file always comes with the digest it is checked against
FILE_KEYS = (("onnx", "sha256"), ("onnx_fp16", "sha256_fp16"), ("onnx_inlined", "sha256_inlined"))


def _found(v: Any) -> str:
    """A short picture of a value for messages (any JSON value, however large or deep)."""
    try:
        text = json.dumps(v, default=str) if isinstance(v, (dict, list)) else repr(v[:100] if isinstance(v, str) else v)
    except (ValueError, RecursionError):
        text = f"a deeply nested {type(v).__name__}"
    return text if len(text) <= 80 else text[:77] + "..."


def _describe(rule: Any) -> str:
    if isinstance(rule, dict):
        return "an object"
    if isinstance(rule, Nullable):
        return _describe(rule.rule) + " or null"
    if isinstance(rule, ListOf):
        of = "objects" if isinstance(rule.item, dict) else rule.item.many
        n = f" ({rule.length} of them)" if rule.length else (" (at least one)" if rule.min_length else "")
        return f"a list of {of}{n}"
    return rule.what


def schema_errors(value: Any, rule: Any, where: str) -> list[str]:
    """Every way `value` breaks `rule`, as "<key path> must be <what>, found <value>"."""
    if isinstance(rule, Nullable):
        return [] if value is None else schema_errors(value, rule.rule, where)
    if isinstance(rule, dict):
        if not isinstance(value, dict):
            return [f"{where or 'the manifest'} must be an object, found {_found(value)}"]
        out = []
        for key, (sub, required) in rule.items():
            path = f"{where}.{key}" if where else key
            if key not in value:
                if required:
                    out.append(f"{path} is missing")
                continue
            out += schema_errors(value[key], sub, path)
        return out
    if isinstance(rule, ListOf):
        bad_len = rule.length is not None and isinstance(value, list) and len(value) != rule.length
        if not isinstance(value, list) or bad_len or len(value) < rule.min_length \
                or (not isinstance(rule.item, dict) and not all(rule.item.ok(v) for v in value)):
            return [f"{where} must be {_describe(rule)}, found {_found(value)}"]
        if isinstance(rule.item, dict):
            return [e for i, v in enumerate(value) for e in schema_errors(v, rule.item, f"{where}[{i}]")]
        return []
    return [] if rule.ok(value) else [f"{where} must be {rule.what}, found {_found(value)}"]


def manifest_errors(data: Any) -> list[str]:
    """Schema violations of a manifest, then the rules across keys (digests, unique names)."""
    errors = schema_errors(data, MANIFEST_SCHEMA, "")
    if errors:
        return errors
    entries = [("baseline", data["baseline"])] + [(f"settings[{i}]", s) for i, s in enumerate(data["settings"])]
    seen: dict[str, str] = {}
    for where, e in entries:
        for key, hkey in FILE_KEYS:
            if key in e and hkey not in e:
                errors.append(f"{where}.{hkey} is missing (the digest {where}.{key} is checked against)")
        if e["name"] in seen:
            errors.append(f"{where}.name {e['name']!r} repeats {seen[e['name']]}.name")
        seen.setdefault(e["name"], where)
    data_paths = [d["path"] for d in data.get("data_files") or []]
    if len(set(data_paths)) != len(data_paths):
        errors.append(f"data_files lists a file twice ({data_paths})")
    graphs = {e.get(k) for _, e in entries for k, _ in FILE_KEYS if e.get(k)}
    for p in data_paths:
        if p in graphs or p == MANIFEST:
            errors.append(f"data_files names {p!r}, which is a graph file or the manifest")
    for where, e in entries:
        for p in e.get("external_data") or []:
            if p not in data_paths:
                errors.append(f"{where}.external_data names {p!r}, which data_files does not list (with its sha256)")
    for i, e in enumerate(data.get("engines") or []):
        if e.get("plugin_library") and not e.get("plugin_sha256"):
            errors.append(f"engines[{i}].plugin_sha256 is missing (the digest engines[{i}].plugin_library "
                          "is checked against)")
    return errors


def check_manifest(data: Any, where: str = MANIFEST) -> dict:
    """`data` if it is a well-formed manifest; else ArtifactError naming every violation (up to 5)."""
    if not isinstance(data, dict):
        raise ArtifactError(f"{where} does not hold an object (found {_found(data)}); {REEXPORT}")
    if data.get("format") != FORMAT:
        raise ArtifactError(f"{where} has format {_found(data.get('format'))}, expected {FORMAT!r}; "
                            "re-export with this version")
    errors = manifest_errors(data)
    if errors:
        more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
        raise ArtifactError(f"{where}: " + "; ".join(errors[:5]) + more + f"; {REEXPORT}")
    return data


def load_manifest(export_dir: str | os.PathLike, verify: bool = False) -> dict:
    """Read `DIR/manifest.json` and check it (`check_manifest`: schema, names, paths inside the
    folder). With `verify`, also check every listed file's sha256."""
    p = manifest_path(export_dir)
    if p.is_symlink() or not p.is_file():
        what = "is a symlink" if p.is_symlink() else "does not exist"
        raise ArtifactError(
            f"{p} {what}: {export_dir} is not an export folder. "
            "Run `algm-export export ... --out DIR` first."
        )
    try:
        data = json.loads(p.read_bytes(), parse_constant=_no_constant)
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError, RecursionError) as e:
        msg = " ".join(str(e).split())[:200]
        raise ArtifactError(f"{p} is not valid JSON ({msg}); re-run the export with --force.") from None
    except OSError as e:
        raise ArtifactError(f"cannot read {p} ({e}); check the folder's permissions") from None
    check_manifest(data, str(p))
    for rel, _digest, what in listed_files(data):
        resolve_inside(export_dir, rel, what)
    if verify:
        verify_files(export_dir, data)
    return data


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def listed_files(data: dict) -> list[tuple[str, str, str]]:
    """(relative path, sha256, what) of every file the manifest lists (engines and plugins too)."""
    out = []
    entries = [("baseline", data.get("baseline") or {})] + [
        (f"settings[{i}]", s) for i, s in enumerate(data.get("settings") or [])]
    for where, e in entries:
        for key, hkey in FILE_KEYS:
            if e.get(key):
                out.append((e[key], e.get(hkey), f"{where}.{key}"))
    for i, d in enumerate(data.get("data_files") or []):
        out.append((d["path"], d.get("sha256"), f"data_files[{i}]"))
    for i, e in enumerate(data.get("engines") or []):
        out.append((e["file"], e.get("sha256"), f"engines[{i}].file"))
        if e.get("plugin_library"):
            out.append((e["plugin_library"], e.get("plugin_sha256"), f"engines[{i}].plugin_library"))
    return out


def verify_file(export_dir: str | os.PathLike, rel: str, digest: str, what: str) -> Path:
    """The real path of a listed file once its sha256 matches the manifest (checked before any
    reader parses it); ArtifactError when it is missing, outside the folder or changed."""
    p = resolve_inside(export_dir, rel, what)
    if not p.is_file():
        raise ArtifactError(f"{p} is listed in the manifest ({what}) but missing; {REEXPORT}")
    if sha256_file(p) != digest:
        raise ArtifactError(f"{p}: sha256 does not match the manifest (file changed or corrupted); re-export "
                            "the folder (`algm-export export ... --out DIR --force`), or for an engine rebuild it "
                            "(`algm-export build DIR`)")
    return p


def find_listing(path: str | os.PathLike) -> Optional[tuple[Path, dict, Optional[dict]]]:
    """For a file inside an export folder (`DIR/x.onnx`, `DIR/engines/x.engine`): (DIR, its checked
    manifest, the file's engine record or None) once the file's sha256 matches the manifest.
    None when no manifest.json is beside or above it, or the manifest does not list it."""
    p = Path(os.path.abspath(path))  # as named: a listed file that is a symlink leading out is refused
    for d in (p.parent, p.parent.parent):
        if not manifest_path(d).is_file():
            continue
        data = load_manifest(d)
        rel = p.relative_to(d).as_posix()
        for listed, digest, what in listed_files(data):
            if listed == rel:
                verify_file(d, rel, digest, what)
                rec = next((e for e in data.get("engines") or [] if e["file"] == rel), None)
                return d, data, rec
        return None
    return None


def verify_files(export_dir: str | os.PathLike, data: dict) -> None:
    bad = []
    for rel, digest, what in listed_files(data):
        p = resolve_inside(export_dir, rel, what)
        if not p.is_file():
            bad.append(f"{rel}: missing")
        elif sha256_file(p) != digest:
            bad.append(f"{rel}: sha256 does not match the manifest (file changed or corrupted)")
    if bad:
        raise ArtifactError(
            "export folder does not match its manifest:\n  " + "\n  ".join(bad)
            + f"\nRe-export into {export_dir} with --force (or rebuild the engines)."
        )


def save_manifest(export_dir: str | os.PathLike, data: dict) -> Path:
    data = dict(data)
    data["format"] = FORMAT
    check_manifest(data)  # never write a manifest that the readers would refuse
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
