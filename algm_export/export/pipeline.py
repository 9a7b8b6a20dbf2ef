"""`algm-export export`: baseline + one ONNX per threshold setting, calibrated, with a manifest.

Token modes (recorded per setting as ``"token_mode"``): ``static`` (default) calibrates
capacities per threshold; ``dynamic`` (docs/algorithm.md: dynamic token mode) needs no capacities and no calibration
(``"capacities": None``, ``"calibration": None``) and its entries are named ``<setting>_dyn``;
``dynamic`` with ``threshold_input=True`` writes one file for every threshold, one entry with
``"threshold_input": True`` and ``"thresholds"`` the operating points it was exported for.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
from pathlib import Path
from typing import Optional, Sequence

import onnx

from algm_export.merging.calibrate import calibrate
from algm_export.core.errors import ArtifactError, ConfigError
from algm_export.export.exporter import check_batch, export_onnx
from algm_export.export.external import AUTO_BYTES, WeightStore, model_bytes
from algm_export.export.readiness import check_readiness
from algm_export.core.lock import LOCK_NAME, folder_lock
from algm_export.core.manifest import save_manifest, sha256_file, tool_versions
from algm_export.merging.driver import apply_algm
from algm_export.core.setting import AlgmSetting
from algm_export.core.progress import progress_bar, stage, status
from algm_export.core.names import TOKEN_MODES


def model_info(model, source: str) -> dict:
    """The manifest's `model` record: what the model is, where it came from, and every file it was
    read from with its sha256 (`files`: the roles its checkpoint format gave them, e.g. checkpoint and
    variant, or checkpoint and config), so that the folder checks them without knowing the format."""
    info = model.describe()
    info["source"] = source
    info["config"] = model.cfg.to_dict()
    info["checkpoint_sha256"] = None
    info["config_sha256"] = None
    files = getattr(model, "source_files", None) or {}
    if not source.startswith("builtin:") and files:
        info["files"] = {role: {"path": str(Path(p).resolve()), "sha256": sha256_file(p)} for role, p in files.items()}
        info["checkpoint_sha256"] = info["files"]["checkpoint"]["sha256"]
        if "config" in info["files"]:
            info["config_sha256"] = info["files"]["config"]["sha256"]
    return info


def calibration_tensors(model, calib_images=None, limit: Optional[int] = None):
    """(names, [1,3,H,W] normalised tensors at the model's size) from a folder or the built-in photos."""
    from algm_export.models.images import model_inputs

    pairs = model_inputs(calib_images, limit=limit, model=model)
    return [n for n, _ in pairs], [x for _, x in pairs]


def settings_for(model, thresholds: Optional[Sequence[float]], layers=None, window=None) -> list[AlgmSetting]:
    cfg = model.cfg
    own = cfg.algm or {}
    base_layers = tuple(layers or own.get("selected_layers") or ((1, 7) if cfg.n_layers >= 24 else (1, 5)))
    win = own.get("merging_window_size", (2, 2))
    win = tuple(window or ((win, win) if isinstance(win, int) else win))
    if not thresholds:
        thresholds = [float(own.get("threshold", 0.88))]
    out = [AlgmSetting(t, win, base_layers) for t in thresholds]
    for s in out:
        model.check_setting(s)
    names = [s.name for s in out]
    if len(set(names)) != len(names):
        raise ConfigError(f"duplicate threshold settings {names}; give each threshold once")
    return out




def dynamic_name(setting: AlgmSetting, threshold_input: bool = False) -> str:
    """Manifest name of a dynamic-mode entry: `<setting>_dyn`, or `tin_l<layers>[...]_dyn` for the
    threshold-input file that serves every threshold."""
    if not threshold_input:
        return f"{setting.name}_dyn"
    return "tin" + setting.name[setting.name.index("_"):] + "_dyn"


def export_folder(model, source: str, out_dir, thresholds=None, calib_images=None, quantile: float = 1.0,
                  inline: bool = False, force: bool = False, layers=None, window=None, fp16: bool = False,
                  calib_limit: Optional[int] = None, capacities=None, wait=False, token_mode: str = "static",
                  threshold_input: bool = False, dynamic_thresholds: Optional[Sequence[float]] = None,
                  external_data: Optional[bool] = None, batch: Optional[int] = None) -> dict:
    """Export baseline + settings into out_dir and write out_dir/manifest.json (last, atomically).

    token_mode "static" (capacities calibrated per threshold, or given) or "dynamic" (no
    capacities: data-dependent token slots); threshold_input (dynamic only): one file whose graph
    takes the threshold as an input, for all `thresholds`. dynamic_thresholds (static mode): also
    export these thresholds in dynamic token mode (entries `<setting>_dyn`), in the same folder.
    The folder's lock (`algm_export.core.lock`) is held for the whole export and taken before the
    folder is checked for emptiness, so of two exports into one new folder only one proceeds;
    the other stops with FolderInUse (or, with `wait`, waits and then finds the folder taken).
    external_data: store the weights as ONNX external data, once for the whole folder
    (`export.external`: one `weights.bin` that every entry points into); None (default): when the
    model's weights pass `external.AUTO_BYTES` (protobuf's 2 GiB limit). batch: None (default) for
    graphs with a dynamic batch axis, 1 for graphs that take one image per run (the manifest's
    `batch`; docs/decisions.md item 59)."""
    check_batch(batch)
    if token_mode not in TOKEN_MODES:
        raise ConfigError(f"token mode {token_mode!r} unknown; use one of {TOKEN_MODES}")
    if token_mode == "dynamic" and capacities is not None:
        raise ConfigError("dynamic token mode has no capacities; drop --capacities or use --token-mode static")
    if threshold_input and token_mode != "dynamic":
        raise ConfigError("--threshold-input needs --token-mode dynamic (static capacities are calibrated "
                          "for one threshold)")
    settings = settings_for(model, thresholds, layers, window)
    dyn_settings = []
    if dynamic_thresholds:
        if token_mode != "static":
            raise ConfigError("--dynamic-thresholds adds dynamic entries to a static export; with --token-mode "
                              "dynamic give the thresholds as --thresholds")
        dyn_settings = settings_for(model, dynamic_thresholds, layers, window)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ArtifactError(f"{out} exists and is not a folder; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    with folder_lock(out, "export", wait):
        if external_data is None:
            external_data = model_bytes(model) > AUTO_BYTES
        if any(p.name != LOCK_NAME for p in out.iterdir()) and not force:
            raise ArtifactError(f"{out} is not empty; pass --force to re-export into it (the old manifest stays "
                                "valid until the new export is complete)")
        with WeightStore(out) if external_data else contextlib.nullcontext() as weights:
            manifest = _export_locked(model, source, out, settings, calib_images, quantile, inline, fp16,
                                      calib_limit, capacities, token_mode, threshold_input, dyn_settings, weights,
                                      batch)
            if weights is not None:
                record = weights.finish()
                manifest["data_files"] = [record] if record else []
                for e in [manifest["baseline"]] + manifest["settings"]:
                    e["external_data"] = [record["path"]] if record else []
            save_manifest(out, manifest)
            return manifest


def _export_locked(model, source: str, out: Path, settings, calib_images, quantile, inline, fp16,
                   calib_limit, capacities, token_mode, threshold_input, dyn_settings=(), weights=None,
                   batch=None) -> dict:
    """The entries of the folder (graphs written, weights into `weights`); returns the manifest, not yet saved."""
    manifest = {
        "created": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "model": model_info(model, source),
        "batch": batch,
        "baseline": None,
        "settings": [],
        "engines": [],
        "versions": tool_versions(),
    }

    if token_mode == "dynamic":
        names, images = [], []  # nothing to calibrate
    else:
        with stage("reading the calibration images", announce=False):
            names, images = calibration_tensors(model, calib_images, calib_limit)
    total = 1 + (1 if threshold_input else len(settings)) + len(dyn_settings)
    with progress_bar(total=total, desc="export", unit="model") as bar:
        with stage("exporting baseline"):
            entry = _export_entry(model, out / "baseline.onnx", inline, fp16, weights=weights, batch=batch)
        manifest["baseline"] = {"name": "baseline", **entry}
        bar.update(1)
        if token_mode == "dynamic":
            manifest["settings"] = _export_dynamic(model, out, settings, threshold_input, inline, fp16, bar, weights,
                                                   batch)
            return manifest
        for s in settings:
            if capacities is not None:
                cal = {"capacities": list(capacities), "counts": None, "quantile": None, "images": [],
                       "images_over_capacity": None, "n_patches": model.cfg.grid[0] * model.cfg.grid[1],
                       "note": "capacities given by the user"}
            else:
                with stage(f"calibrating {s.name} on {len(images)} images"):
                    cal = calibrate(model, s, images, names, quantile, progress=lambda it, s=s: progress_bar(
                        iterable=it, total=len(images), desc=f"calibrate {s.name}", unit="img", leave=False))
            static = apply_algm(model, s, cal["capacities"])
            with stage(f"exporting {s.name}"):
                entry = _export_entry(static, out / f"{s.name}.onnx", inline, fp16, weights=weights, batch=batch)
            manifest["settings"].append({"name": s.name, **s.to_dict(), "token_mode": "static",
                                         "capacities": cal["capacities"], "calibration": cal, **entry})
            bar.update(1)
        if dyn_settings:
            manifest["settings"] += _export_dynamic(model, out, list(dyn_settings), False, inline, fp16, bar,
                                                    weights, batch)
    return manifest


def _export_dynamic(model, out: Path, settings: list, threshold_input: bool, inline: bool, fp16: bool,
                    bar, weights=None, batch=None) -> list[dict]:
    """Dynamic token mode: one entry per threshold, or one threshold-input entry for all."""
    entries = []
    todo = settings[:1] if threshold_input else settings
    for s in todo:
        name = dynamic_name(s, threshold_input)
        dyn = apply_algm(model, s, token_mode="dynamic")
        with stage(f"exporting {name} (dynamic token mode)"):
            entry = _export_entry(dyn, out / f"{name}.onnx", inline, fp16, threshold_input=threshold_input,
                                  weights=weights, batch=batch)
        record = {"name": name, **s.to_dict(), "token_mode": "dynamic", "capacities": None, "calibration": None,
                  "threshold_input": threshold_input, **entry}
        if threshold_input:
            record["thresholds"] = sorted({t.threshold for t in settings})
        entries.append(record)
        bar.update(1)
    return entries


def _export_entry(model, path: Path, inline: bool, fp16: bool, threshold_input: bool = False,
                  weights=None, batch=None) -> dict:
    kw = {"threshold_input": True} if threshold_input else {}
    if batch is not None:
        kw["batch"] = batch
    if weights is not None:
        kw["weights"] = weights
    export_onnx(model, path, **kw)
    ready = check_readiness(onnx.load(str(path), load_external_data=False))
    entry = {"onnx": path.name, "sha256": sha256_file(path), "precision": "fp32", "tensorrt_ready": ready["ready"],
             "tensorrt_problems": ready["problems"], "algm_nodes": ready["algm_nodes"],
             "inputs": ["image", "threshold"] if threshold_input else ["image"]}
    if inline:
        p = path.with_name(path.stem + ".inlined.onnx")
        export_onnx(model, p, inline=True, **kw)
        entry.update(onnx_inlined=p.name, sha256_inlined=sha256_file(p))
    if fp16:
        from algm_export.export.fp16 import export_fp16

        p = path.with_name(path.stem + ".fp16.onnx")
        export_fp16(model, p, **kw)
        entry.update(onnx_fp16=p.name, sha256_fp16=sha256_file(p))
    return entry
