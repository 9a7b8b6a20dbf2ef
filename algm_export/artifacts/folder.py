"""`ExportFolder`: load (schema-checked), save, resolve paths inside, check sha256s, and give the
model, the entries with their `AlgmSetting` as exported, their ONNX files, engines and inputs.

    folder = ExportFolder.load("out/vit_s", verify=True)
    model = folder.model(trust_checkpoint=False)          # checkpoint files sha256-checked first
    for entry in folder.entries:                          # baseline, then the settings
        entry.setting()                                   # AlgmSetting with the stored policy
        entry.onnx_path("fp16")                           # resolved inside, sha256-checked
        entry.engine("fp32", backend="tensorrt")          # EngineRecord (ArtifactError if none)

An entry keeps its raw manifest dict (`entry.raw`): keys this code does not know (e.g. a
setting's `token_mode`) are kept and saved back unchanged.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional

from algm_export.core.errors import AlgmError, ArtifactError, ConfigError
from algm_export.core.manifest import (REEXPORT, find_listing, load_manifest, resolve_inside, save_manifest,
                                  sha256_file, verify_file, write_json_atomic)
from algm_export.core.names import PRECISIONS

_ONNX_KEYS = {"fp32": ("onnx", "sha256"), "fp16": ("onnx_fp16", "sha256_fp16")}


def find_engine_record(data: dict, setting: str = "baseline", precision: str = "fp32",
                       backend: str | None = None, plugins: bool | None = None) -> dict:
    """The manifest record of one engine (the first match); ArtifactError when none is listed."""
    for rec in data.get("engines") or []:
        if rec.get("setting") != setting or rec.get("precision") != precision:
            continue
        if backend is not None and rec.get("backend") != backend:
            continue
        if plugins is not None and bool(rec.get("plugin_library")) != plugins:
            continue
        return rec
    raise ArtifactError(f"no {precision} engine for {setting!r}"
                        + (f" built with {backend}" if backend else "")
                        + " in the manifest; build it first (`algm-export build DIR`).")


def same_engine(a: dict, b: dict) -> bool:
    """Two engine records of one (setting, backend, precision, plugin use): a new build replaces the old."""
    return (a.get("setting") == b.get("setting") and a.get("backend") == b.get("backend")
            and a.get("precision") == b.get("precision")
            and bool(a.get("plugin_library")) == bool(b.get("plugin_library")))


@dataclass(frozen=True)
class EngineRecord:
    """One built engine as the manifest lists it (`raw` is the record)."""

    folder: "ExportFolder"
    raw: dict

    setting = property(lambda self: self.raw["setting"])
    backend = property(lambda self: self.raw["backend"])
    precision = property(lambda self: self.raw["precision"])
    has_plugins = property(lambda self: bool(self.raw.get("plugin_library")))

    def engine_path(self) -> Path:
        """The engine file, resolved inside the folder and sha256-checked."""
        return verify_file(self.folder.path, self.raw["file"], self.raw["sha256"], f"engine of {self.setting}")

    def plugin_path(self) -> Optional[Path]:
        lib = self.raw.get("plugin_library")
        if not lib:
            return None
        return verify_file(self.folder.path, lib, self.raw["plugin_sha256"], f"plugin library of {self.setting}")


@dataclass(frozen=True)
class Entry:
    """The baseline or one threshold setting of an export folder."""

    folder: "ExportFolder"
    raw: dict

    name = property(lambda self: self.raw["name"])
    is_baseline = property(lambda self: "threshold" not in self.raw)
    threshold = property(lambda self: self.raw.get("threshold"))
    capacities = property(lambda self: self.raw.get("capacities"))
    layers = property(lambda self: self.raw.get("layers"))
    window = property(lambda self: self.raw.get("window"))
    policy = property(lambda self: self.raw.get("policy", "per_image"))
    #: "static" (capacities), "dynamic" (data-dependent token slots) or None for the baseline;
    #: entries written before the dynamic mode existed are static
    token_mode = property(lambda self: None if self.is_baseline else self.raw.get("token_mode") or "static")
    is_dynamic = property(lambda self: self.token_mode == "dynamic")
    #: the graph takes the CLAP threshold as an input (`export --token-mode dynamic --threshold-input`)
    takes_threshold = property(lambda self: bool(not self.is_baseline and self.raw.get("threshold_input")))

    @property
    def thresholds(self) -> list[float]:
        """The thresholds to run this entry at: a threshold-input entry's operating points (its
        `thresholds`, else its default `threshold`); [its threshold] for others, [] for the baseline."""
        if self.is_baseline:
            return []
        if self.takes_threshold:
            return [float(t) for t in (self.raw.get("thresholds") or [self.threshold])]
        return [float(self.threshold)]

    def get(self, key: str, default: Any = None) -> Any:
        return self.raw.get(key, default)

    def setting(self):
        """The `AlgmSetting` exactly as exported (threshold, window, layers, stored policy); None for the baseline."""
        from algm_export.core.setting import AlgmSetting

        if self.is_baseline:
            return None
        try:
            return AlgmSetting(self.threshold, tuple(self.window), tuple(self.layers), self.policy)
        except AlgmError as e:
            raise ArtifactError(f"manifest.json: setting {self.name}: {e}; re-export the folder") from None

    def run_thresholds(self, thresholds: Optional[Iterable[float]] = None) -> list[Optional[float]]:
        """What to run this entry at: [None] when its threshold is built in (or the baseline); for a
        threshold-input entry `thresholds` (default `self.thresholds`), each checked as a setting
        (ConfigError outside [-1, 1])."""
        if not self.takes_threshold:
            return [None]
        ts = [float(t) for t in (thresholds or self.thresholds)]
        for t in ts:
            self.setting().with_threshold(t)
        return ts

    def has_precision(self, precision: str) -> bool:
        return precision in _ONNX_KEYS and bool(self.raw.get(_ONNX_KEYS[precision][0]))

    def onnx_path(self, precision: str = "fp32") -> Path:
        """The entry's ONNX of `precision`, resolved inside the folder and sha256-checked before anyone parses it."""
        if precision not in _ONNX_KEYS:
            raise ConfigError(f"precision {precision!r} unknown; use one of {', '.join(PRECISIONS)}")
        key, hkey = _ONNX_KEYS[precision]
        if not self.raw.get(key):
            raise ConfigError(f"{self.name} has no {precision} ONNX; re-export with "
                              f"`algm-export export ... --precision {precision}`")
        return self.folder.graph_file(self.raw[key], self.raw[hkey], f"{self.name}.{key}")

    def data_paths(self, precision: str = "fp32") -> list[Path]:
        """The external-data files the entry's ONNX of `precision` points into (real paths inside the
        folder, sha256-checked; [] when its weights are inside the graph). Whoever copies an entry
        elsewhere (a Triton model repository) copies these beside its ONNX, under the same names."""
        from algm_export.artifacts.external import check_graph_file

        return check_graph_file(self.onnx_path(precision), self.folder.path, self.folder.data_files,
                                f"{self.name} {precision} ONNX")

    def engines(self, precision: Optional[str] = None, backend: Optional[str] = None,
                plugins: Optional[bool] = None) -> list[EngineRecord]:
        out = []
        for rec in self.folder.data.get("engines") or []:
            if rec.get("setting") != self.name:
                continue
            if precision is not None and rec.get("precision") != precision:
                continue
            if backend is not None and rec.get("backend") != backend:
                continue
            if plugins is not None and bool(rec.get("plugin_library")) != plugins:
                continue
            out.append(EngineRecord(self.folder, rec))
        return out

    def engine(self, precision: str = "fp32", backend: Optional[str] = None,
               plugins: Optional[bool] = None) -> EngineRecord:
        """The first engine of this entry that matches; ArtifactError when none is listed."""
        return EngineRecord(self.folder, find_engine_record(self.folder.data, self.name, precision, backend, plugins))


class ExportFolder:
    """An export folder: `manifest.json` (schema-checked on load) and the files it lists."""

    def __init__(self, path: str | os.PathLike, data: dict):
        self.path = Path(path)
        self.data = data

    @classmethod
    def load(cls, path: str | os.PathLike, verify: bool = False) -> "ExportFolder":
        """Load and schema-check the manifest (ArtifactError when it is missing or malformed);
        `verify`: also check the sha256 of every file it lists."""
        return cls(path, load_manifest(path, verify=verify))

    def save(self) -> Path:
        return save_manifest(self.path, self.data)

    # ---------------------------------------------------------------- contents
    @property
    def model_info(self) -> dict:
        return self.data["model"]

    @property
    def batch(self) -> Optional[int]:
        """The images every graph of the folder takes per run (exported with `--batch 1`), None for a
        dynamic batch axis."""
        return self.data.get("batch")

    @property
    def baseline(self) -> Entry:
        return Entry(self, self.data["baseline"])

    @property
    def settings(self) -> list[Entry]:
        return [Entry(self, s) for s in self.data["settings"]]

    @property
    def entries(self) -> list[Entry]:
        """The baseline, then every setting, in manifest order."""
        return [self.baseline] + self.settings

    def entry(self, name: str) -> Entry:
        for e in self.entries:
            if e.name == name:
                return e
        raise ConfigError(f"no setting {name} in the manifest (it has {', '.join(e.name for e in self.entries)}).")

    def select(self, only: Optional[Iterable[str]] = None) -> list[Entry]:
        """The entries named in `only` (all when None); ConfigError for an unknown name."""
        entries = self.entries
        if only is None:
            return entries
        only = list(only)
        names = [e.name for e in entries]
        unknown = [n for n in only if n not in names]
        if unknown:
            raise ConfigError(f"no setting {', '.join(unknown)} in the manifest (it has {', '.join(names)}).")
        return [e for e in entries if e.name in only]

    def runs(self, thresholds: Optional[Iterable[float]] = None) -> list[list[Optional[float]]]:
        """Per entry (`entries` order), the thresholds to run it at (`Entry.run_thresholds`). `thresholds`
        (CLI `--threshold`) is for threshold-input entries: ConfigError when the folder has none."""
        thresholds = list(thresholds) if thresholds else None
        if thresholds and not any(e.takes_threshold for e in self.entries):
            raise ConfigError(f"--threshold {','.join(f'{t:g}' for t in thresholds)}: no entry of {self.path} takes "
                              "the threshold as an input (the others have theirs built in); drop --threshold, or "
                              "export with `algm-export export ... --token-mode dynamic --threshold-input`")
        return [e.run_thresholds(thresholds) for e in self.entries]

    @property
    def engines(self) -> list[EngineRecord]:
        return [EngineRecord(self, r) for r in self.data.get("engines") or []]

    # ---------------------------------------------------------------- files inside
    def resolve(self, rel: Any, what: str, fix: str = REEXPORT) -> Path:
        """`rel` inside the folder (ArtifactError for absolute paths, '..' or a symlink leading out;
        `fix`: what its message tells the user to do)."""
        return resolve_inside(self.path, rel, what, fix)

    def verify(self, rel: str, digest: str, what: str) -> Path:
        return verify_file(self.path, rel, digest, what)

    @property
    def data_files(self) -> dict[str, str]:
        """{relative path: sha256} of the folder's ONNX external-data files (`weights.bin`); {} for a
        folder whose graphs hold their weights."""
        return {d["path"]: d["sha256"] for d in self.data.get("data_files") or []}

    def data_file_paths(self) -> list[Path]:
        """The external-data files, resolved inside the folder and sha256-checked."""
        return [verify_file(self.path, rel, digest, f"data file {rel}") for rel, digest in self.data_files.items()]

    def graph_file(self, rel: str, digest: str, what: str) -> Path:
        """A listed ONNX file, ready for any parser: sha256-checked, and every external-data location
        it names checked (inside the folder, listed in `data_files`, sha256) before anything reads it
        (`artifacts.external`)."""
        from algm_export.artifacts.external import check_graph_file

        p = verify_file(self.path, rel, digest, what)
        check_graph_file(p, self.path, self.data_files, what)
        return p

    def write_json(self, rel: str, data: Any, what: str) -> Path:
        p = self.resolve(rel, what)
        write_json_atomic(p, data)
        return p

    # ---------------------------------------------------------------- engine records
    def add_engine(self, record: dict) -> EngineRecord:
        """Add a built engine's record and save the manifest (schema-checked): it replaces the record of
        an earlier build of the same setting, backend, precision and plugin use, or of the same file."""
        if record.get("setting") not in [e.name for e in self.entries]:
            raise ArtifactError(f"engine record for {record.get('setting')!r}: no such entry in the manifest")
        kept = [r for r in self.data.get("engines") or []
                if not same_engine(r, record) and r.get("file") != record.get("file")]
        self.data["engines"] = kept + [record]
        self.save()
        return EngineRecord(self, record)

    @classmethod
    def of_file(cls, path: str | os.PathLike) -> Optional[tuple["ExportFolder", Optional[Entry],
                                                                  Optional[EngineRecord]]]:
        """For a file of an export folder (`DIR/x.onnx`, `DIR/engines/x.engine`): (the folder, the entry the
        file belongs to, its engine record or None), once the file's sha256 matches the manifest. None
        when no manifest lists the file."""
        found = find_listing(path)
        if found is None:
            return None
        d, data, rec = found
        folder = cls(d, data)
        rel = Path(os.path.abspath(path)).relative_to(Path(os.path.abspath(d))).as_posix()
        name = rec["setting"] if rec else next(
            (e.name for e in folder.entries
             if rel in {e.get(k) for k in ("onnx", "onnx_fp16", "onnx_inlined")}), None)
        entry = next((e for e in folder.entries if e.name == name), None)
        if rec is None and Path(path).suffix == ".onnx":
            from algm_export.artifacts.external import check_graph_file

            check_graph_file(Path(d) / rel, d, folder.data_files, rel)
        return folder, entry, (EngineRecord(folder, rec) if rec else None)

    # ---------------------------------------------------------------- model and inputs
    def model(self, trust_checkpoint: bool = False):
        """The PyTorch model the folder was exported from, at the export's image size (see `model_from_manifest`)."""
        return model_from_manifest(self.data, trust_checkpoint, self.path)

    def inputs(self, images=None, model=None, limit: Optional[int] = None) -> list[tuple[str, Any]]:
        """[(name, model input [1,3,H,W] tensor)] of `images` (a folder, files; default the bundled sample
        photos), at the model's size and normalization (`model`, else the manifest's model record)."""
        from algm_export.models.images import model_inputs

        if model is not None:
            return model_inputs(images, limit=limit, model=model)
        return model_inputs(images, tuple(self.model_info["image_size"]), self.model_info.get("normalization", "vit"),
                            limit=limit)


def model_from_manifest(man: dict, trust_checkpoint: bool = False, export_dir=None):
    """The PyTorch model an export folder was made from, at the export's image size.

    Every file the manifest lists for the model (`model.files`: the checkpoint and whatever its format
    reads beside it) is sha256-checked before anything is read, the checkpoint is loaded weights-only
    unless `trust_checkpoint`, and the files it was then read from must be the listed ones. A run size
    other than the checkpoint's (`export --image-size`) is confirmed by the baseline ONNX's input shape
    (with `export_dir`)."""
    from algm_export.models.registry import resolve_model

    info = man["model"]
    src = info["source"]
    if not src.startswith("builtin:"):
        files = info.get("files")
        if not files:
            raise ArtifactError(f"manifest.json: model.files is missing for the checkpoint {src}, so its files cannot "
                                "be checked before loading (the folder was written by an older algm-export); re-export "
                                "the folder")
        for role, rec in files.items():
            path = Path(rec["path"])
            if not path.is_file():
                raise ArtifactError(f"{path} ({role}) is missing (the export was made from it); restore it or re-export")
            if sha256_file(path) != rec["sha256"]:
                raise ArtifactError(f"{path} ({role}) changed since the export (sha256 differs); re-export")
        # read exactly the files just checked (`source` is what the user typed, e.g. a folder)
        config = files["config"]["path"] if "config" in files else None
        model = resolve_model(files["checkpoint"]["path"], config=config, trust_checkpoint=trust_checkpoint)
        got = {role: str(Path(p).resolve()) for role, p in (getattr(model, "source_files", None) or {}).items()}
        want = {role: rec["path"] for role, rec in files.items()}
        if got != want:
            raise ArtifactError(f"{src} is now read from other files ({got}) than the export was ({want}); restore "
                                "the folder as it was or re-export")
    else:
        model = resolve_model(src, trust_checkpoint=trust_checkpoint)
    size = tuple(info["image_size"])
    if size != tuple(model.cfg.image_size):
        onnx_size = _onnx_image_size(export_dir, man["baseline"]) if export_dir is not None else size
        if onnx_size != size:
            raise ArtifactError(f"manifest.json: model.image_size {list(size)} differs from the checkpoint's "
                                f"{list(model.cfg.image_size)} and from the exported baseline's "
                                f"{list(onnx_size)}; re-export the folder")
        model.set_image_size(size)
    return model


def _onnx_image_size(export_dir, entry: dict) -> tuple:
    """(H, W) of the `image` input of an entry's ONNX (sha256-checked before it is parsed)."""
    import onnx

    path = verify_file(export_dir, entry["onnx"], entry["sha256"], f"{entry['name']}.onnx")
    try:
        graph = onnx.load(str(path), load_external_data=False).graph
        dims = graph.input[0].type.tensor_type.shape.dim
        return tuple(int(d.dim_value) if d.HasField("dim_value") else None for d in dims[2:4])
    except Exception as e:  # noqa: BLE001  (a corrupt file: protobuf errors of every kind)
        raise ArtifactError(f"{path} is not a readable ONNX model ({type(e).__name__}); re-export it") from None
