"""Build TensorRT / TensorRT-RTX engines for an export folder: the baseline and one engine per
threshold setting.

    from algm_export.tasks.build import build_engines
    build_engines("out/vit_s", backend="tensorrt-rtx", compute_capabilities=[86], precision="fp32")

Each engine is ``engines/<setting>.<precision>[.plugins].engine``, written atomically, with an
optimisation profile over the batch dimension of ``image``; the manifest's ``engines`` list gets
one record per engine (replacing the record of an earlier build with the same setting,
backend, precision and plugin use) and is saved after every engine, so an interrupted build
leaves a valid manifest and no half-written engine.

TensorRT itself runs in a child process (``algm_export.runtimes.tensorrt.worker``), started with
`rtx_env()` for TensorRT-RTX so that its parser's plugin-library lookup cannot abort the
process; a crash of the child comes back as an `EngineBuildError` with the end of its log.

Precision: ``fp32`` builds from the setting's ``onnx``. ``fp16`` builds from ``onnx_fp16`` (the
exporter's fp16 graph, whose merge similarity math stays fp32) as a strongly typed network,
on both backends, so an fp16 engine computes the same thing on TensorRT and TensorRT-RTX.
Only when ``onnx_fp16`` is missing does full TensorRT 10 fall back to the fp32 ONNX with the
FP16 builder flag (weakly typed: TensorRT picks layer precisions itself, merge math included;
the record says ``"fp16_mode": "builder-flag"``); TensorRT-RTX and TensorRT >= 11 have no such
flag (always strongly typed) and ask for a re-export. TF32 is off unless ``tf32=True``, so
fp32 layers (the merge similarity math included) compute in true fp32.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterable, Sequence

from algm_export.artifacts import (ExportFolder, atomic_path, find_engine_record,  # noqa: F401  (re-exported)
                                   locks_export_folder, sha256_file)
from algm_export.core.errors import AlgmError, ArtifactError, BackendUnavailable, CapacityError, ConfigError
from algm_export.runtimes.tensorrt.builder import EngineBuildError
from algm_export.runtimes.tensorrt.loader import (backend_version, cuda_device, describe_environment,
                                                  import_backend, pretty, resolve_backend, rtx_env,
                                                  rtx_targets, supports_weak_typing)
from algm_export.core.names import PRECISIONS

__all__ = ["build_engines", "find_engine_record", "engine_filename", "describe_environment",
           "EngineBuildError", "DEFAULT_RTX_CCS"]

DEFAULT_RTX_CCS = [86]
_ERRORS = {c.__name__: c for c in (AlgmError, ArtifactError, BackendUnavailable, CapacityError,
                                    ConfigError, EngineBuildError)}
_PKG_DIR = str(Path(__file__).resolve().parent)
# The worker needs neither torch nor timm, which `algm_export/__init__.py` imports (seconds per
# engine): it starts with a bare stand-in for the package, so only the modules it uses load.
# (`python -m algm_export.runtimes.tensorrt.worker JOB RESULT` does the same, slower.)
_WORKER_BOOT = ("import sys, types; pkg = types.ModuleType('algm_export'); pkg.__path__ = [{dir!r}]; "
                "sys.modules['algm_export'] = pkg; "
                "from algm_export.runtimes.tensorrt.worker import main; sys.exit(main(sys.argv[1:]))")


def engine_filename(setting: str, precision: str, plugins: bool) -> str:
    return f"engines/{setting}.{precision}{'.plugins' if plugins else ''}.engine"


def _normalize_ccs(ccs: Iterable | int | str) -> list[int]:
    if isinstance(ccs, (int, str)):
        ccs = [c for c in str(ccs).replace(";", ",").split(",") if c.strip()]
    out = []
    for cc in ccs:
        s = str(cc).strip().lower().replace("sm_", "").replace("sm", "")
        m = re.fullmatch(r"(\d+)\.(\d)", s)
        if m:
            s = m.group(1) + m.group(2)
        if not s.isdigit():
            raise ConfigError(f"compute capability {cc!r}: write it as 86, '8.6' or 'sm86'.")
        out.append(int(s))
    return sorted(set(out))


def _check_batch(batch: Sequence[int]) -> list[int]:
    try:
        lo, opt, hi = (int(b) for b in batch)
    except (TypeError, ValueError):
        raise ConfigError(f"batch must be (min, opt, max), got {batch!r}.") from None
    if not 1 <= lo <= opt <= hi:
        raise ConfigError(f"batch must satisfy 1 <= min <= opt <= max, got {batch!r}.")
    return [lo, opt, hi]


DEFAULT_PROFILE = (1, 1, 8)


def _profile_for(folder: ExportFolder, batch: Sequence[int] | None) -> list[int]:
    """The profile [min, opt, max] over the batch: `batch`, or the default; a folder exported for a
    fixed batch n takes only n, n, n."""
    n = folder.batch
    if n is None:
        return _check_batch(DEFAULT_PROFILE if batch is None else batch)
    if batch is not None and list(_check_batch(batch)) != [n, n, n]:
        raise ConfigError(f"--batch {','.join(str(b) for b in batch)}: the folder's graphs take exactly {n} image per "
                          f"run (exported with --batch {n}); drop --batch or give --batch {n}, or export again "
                          "without --batch for engines over a range of batches")
    return [n, n, n]


def _entries(folder: ExportFolder, only: Iterable[str] | None) -> list[tuple[str, dict]]:
    entries = [(e.name, e.raw) for e in folder.select(only)]
    if not entries:
        raise ArtifactError("the manifest lists no baseline and no settings: nothing to build.")
    return entries


def _pick_onnx(folder: ExportFolder, name: str, entry: dict, precision: str, backend: str) -> dict:
    """Which ONNX file builds this engine and how precision is set."""
    key, hkey, mode = "onnx", "sha256", None
    if precision == "fp16":
        if entry.get("onnx_fp16"):
            key, hkey, mode = "onnx_fp16", "sha256_fp16", "onnx"
        elif supports_weak_typing(backend):
            mode = "builder-flag"
        else:
            raise ConfigError(
                f"{name}: the export has no fp16 ONNX (manifest key onnx_fp16), and {pretty(backend)} "
                f"{backend_version(backend)} networks are strongly typed (precision comes from the ONNX): "
                "re-export with --precision fp16.")
    rel = entry.get(key)
    if not rel:
        raise ArtifactError(f"{name}: the manifest names no ONNX file ({key}); re-export.")
    path = folder.graph_file(rel, entry[hkey], f"{name}.{key}")  # external data checked too
    digest = entry[hkey]
    return {"onnx": rel, "path": path, "sha256": digest, "fp16_mode": mode,
            "strongly_typed": mode != "builder-flag"}


def _copy_plugin_library(folder: ExportFolder, src: Path, digest: str) -> tuple[str, Path]:
    """Copy a plugin library into the export folder under its sha256; (relative path, real path)."""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", src.name).lstrip(".") or "plugins.so"
    rel = f"engines/plugins/{digest[:16]}/{name}"
    dst = folder.resolve(rel, "plugin library copy")
    if not (dst.is_file() and sha256_file(dst) == digest):
        with atomic_path(dst) as tmp:
            shutil.copyfile(src, tmp)
            if sha256_file(tmp) != digest:
                raise ArtifactError(f"plugin library {src} changed while it was copied; build again.")
    return rel, dst


def _tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return "\n    ".join(text[-lines:]) if text else "(empty log)"


def _run_worker(job: dict, env: dict, name: str, work_dir: Path) -> dict:
    """Run one build in a child process; return its result or raise a typed error.

    Its job, result and log live in a `.worker-*` folder of `work_dir` (the export's engines/), so
    that a build killed outright leaves them where the next build sweeps them up."""
    with tempfile.TemporaryDirectory(prefix=".worker-", dir=work_dir) as tmp:
        tmp = Path(tmp)
        (tmp / "job.json").write_text(json.dumps(job))
        log = tmp / "worker.log"
        cmd = [sys.executable, "-c", _WORKER_BOOT.format(dir=_PKG_DIR),
               str(tmp / "job.json"), str(tmp / "result.json")]
        with open(log, "wb") as logf:
            rc = subprocess.run(cmd, env=env, stdout=logf, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, cwd=tmp).returncode
        if rc < 0:
            try:
                sig = signal.Signals(-rc).name
            except ValueError:
                sig = f"signal {-rc}"
            raise EngineBuildError(
                f"the {pretty(job['backend'])} build worker for {name} was killed by {sig}; no engine "
                f"was written for it. Last lines of its log:\n    {_tail(log)}")
        try:
            result = json.loads((tmp / "result.json").read_text())
        except (OSError, json.JSONDecodeError):
            raise EngineBuildError(
                f"the {pretty(job['backend'])} build worker for {name} exited with status {rc} and no "
                f"result. Last lines of its log:\n    {_tail(log)}") from None
        if result.get("ok"):
            return result
        cls = _ERRORS.get(result.get("error_type"))
        if cls is not None:
            raise cls(f"{name}: {result['error']}")
        where = (result.get("traceback") or "").strip().splitlines()
        raise EngineBuildError(
            f"{name}: internal error in the build worker: {result.get('error')}"
            + (f" ({where[-3].strip()})" if len(where) >= 3 else "")
            + f"\n  Last lines of its log:\n    {_tail(log, 10)}")


@locks_export_folder("build")
def build_engines(export_dir: str | os.PathLike, backend: str | None = None,
                  plugins: str | os.PathLike | None = None, precision: str = "fp32",
                  batch: Sequence[int] | None = None, compute_capabilities: Iterable | None = None,
                  workspace_mb: int | None = None, progress: bool = True,
                  settings: Iterable[str] | None = None, input_name: str = "image",
                  tf32: bool = False, log_level: str = "error") -> list[dict]:
    """Build the baseline engine and one engine per threshold setting; returns their records.

    backend: "tensorrt", "tensorrt-rtx" or None (tensorrt when importable, else tensorrt-rtx).
    plugins: an algm plugin library (.so); its plugins then implement the algm nodes.
    precision: "fp32" or "fp16" (see the module doc). batch: (min, opt, max) of the profile (default
    1, 1, 8; for a folder of graphs exported for one image per run, `export --batch 1`, only 1, 1, 1).
    compute_capabilities: TensorRT-RTX targets (default [86]); not allowed for full TensorRT,
    which builds for the GPU present. settings: build only these (names; "baseline" included).
    tf32: allow TF32 for fp32 layers (off: fp32 layers, the merge similarity math included,
    stay true fp32). workspace_mb: builder workspace limit. Raises AlgmError subclasses.
    wait: when another run holds the folder, wait for it (True, or at most that many seconds)
    instead of stopping with FolderInUse. A plugin library is copied into the folder
    (``engines/plugins/<sha256>/NAME``), which the records name, so the engines travel with it.
    """
    export_dir = Path(export_dir).resolve()
    folder = ExportFolder.load(export_dir)
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {PRECISIONS}, got {precision!r}.")
    profile = _profile_for(folder, batch)
    backend = resolve_backend(backend)
    version = backend_version(backend)
    rtx = backend == "tensorrt-rtx"

    device = None
    if rtx:
        ccs = _normalize_ccs(compute_capabilities) if compute_capabilities is not None else list(DEFAULT_RTX_CCS)
        if not ccs:
            raise ConfigError("give at least one compute capability to build TensorRT-RTX engines for.")
        supported = rtx_targets(import_backend(backend))
        if set(ccs) - set(supported):
            raise ConfigError(f"TensorRT-RTX {version} cannot target compute capability "
                              f"{', '.join(str(c) for c in sorted(set(ccs) - set(supported)))}; it supports {supported}.")
    else:
        if compute_capabilities:
            raise ConfigError("--compute-capability applies to TensorRT-RTX only: full TensorRT builds "
                              "for the GPU present. Drop it, or use --backend tensorrt-rtx.")
        device = cuda_device()
        if not device.get("available"):
            raise BackendUnavailable(
                f"full TensorRT builds engines on a CUDA GPU and none is usable here "
                f"({device.get('reason')}). Use --backend tensorrt-rtx to build ahead of time without one.")
        ccs = [device["compute_capability"]]
        device = {"name": device["name"], "compute_capability": device["compute_capability"]}

    plugin_src = plugin_sha = plugin_rel = plugin_path = None
    if plugins is not None:
        p = Path(plugins).expanduser().resolve()
        if not p.is_file():
            raise BackendUnavailable(f"plugin library {p} does not exist; build it first "
                                     "(algm_export.tasks.plugins.build_plugins) or drop --plugins.")
        plugin_src, plugin_sha = p, sha256_file(p)

    entries = _entries(folder, settings)
    # Check every ONNX before building anything, so a bad entry fails fast.
    sources = [(name, _pick_onnx(folder, name, e, precision, backend)) for name, e in entries]

    env = rtx_env() if rtx else dict(os.environ)

    from tqdm.auto import tqdm

    records = []
    engines_dir = folder.resolve("engines", "engines folder")
    engines_dir.mkdir(exist_ok=True)
    # Leftovers of a build that was killed outright (holding the lock, no build is running).
    for stale in engines_dir.glob(".*.engine.*.partial"):
        stale.unlink(missing_ok=True)
    for stale in engines_dir.glob(".worker-*"):
        shutil.rmtree(stale, ignore_errors=True)
    if plugin_src is not None:
        plugin_rel, copied = _copy_plugin_library(folder, plugin_src, plugin_sha)
        plugin_path = str(copied)
    bar = tqdm(sources, desc=f"{pretty(backend)} {precision} engines", unit="engine",
               disable=not progress, file=sys.stderr)
    for name, src in bar:
        bar.set_postfix_str(name)
        rel = engine_filename(name, precision, plugin_path is not None)
        final = folder.resolve(rel, f"engine file of {name}")
        job = {"name": name, "onnx": str(src["path"]), "backend": backend, "precision": precision,
               "strongly_typed": src["strongly_typed"], "fp16_flag": src["fp16_mode"] == "builder-flag",
               "input": input_name, "profile": profile, "compute_capabilities": ccs if rtx else [],
               "workspace_mb": workspace_mb, "plugin_library": plugin_path, "strip_functions": True,
               "tf32": bool(tf32), "log_level": log_level}
        t0 = _dt.datetime.now(_dt.timezone.utc)
        with atomic_path(final) as tmp:
            job["engine"] = str(tmp)
            res = _run_worker(job, env, name, engines_dir)
            size = tmp.stat().st_size
            if size != res.get("engine_bytes"):
                raise EngineBuildError(f"{name}: the worker reported {res.get('engine_bytes')} engine "
                                       f"bytes but wrote {size}.")
            digest = sha256_file(tmp)
        wall = (_dt.datetime.now(_dt.timezone.utc) - t0).total_seconds()
        rec = {
            "setting": name, "file": rel, "sha256": digest, "bytes": size,
            "backend": backend, "backend_version": res.get("backend_version", version),
            "precision": precision, "fp16_mode": src["fp16_mode"],
            "strongly_typed": res.get("strongly_typed"), "tf32": res.get("tf32"),
            "onnx": src["onnx"], "onnx_sha256": src["sha256"],
            "input": input_name, "profile": res.get("profile", profile),
            "compute_capabilities": ccs, "device": device,
            "plugin_library": plugin_rel, "plugin_sha256": plugin_sha,
            "plugin_creators": res.get("plugin_creators") or [],
            "functions": res.get("functions"), "token_mode": res.get("token_mode"),
            "build_seconds": res.get("build_seconds"), "parse_seconds": res.get("parse_seconds"),
            "wall_seconds": round(wall, 3),
            "layers": res.get("layers"), "io": res.get("io"),
            "built": t0.strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        folder.add_engine(rec)  # replaces an earlier build's record; saved after every engine
        records.append(rec)
    bar.close()
    return records
