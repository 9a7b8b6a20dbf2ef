"""`algm-export triton-repo DIR --out REPO`: a model repository for a production `tritonserver`
(NVIDIA's container), one model per entry of the export folder.

    REPO/
      README.md                         the server command, the models, the TensorRT version to match
      models/                           the model repository (`tritonserver --model-repository=REPO/models`)
        baseline/config.pbtxt           platform, max_batch_size, dynamic_batching, instance_group, io
        baseline/1/model.onnx           (or model.plan; model_sm86.plan, ... per compute capability)
        t0.880_l1-5/...
      plugins/libalgm_plugins.so        when the engines were built with the plugin library (outside
                                        models/: Triton takes every folder there for a model)

`--backend onnxruntime` (default): every entry's ONNX as `platform: "onnxruntime_onnx"` (the ALGM
ops' function bodies run in ONNX Runtime with no native code). `--backend tensorrt`: every entry's
TensorRT engine as `platform: "tensorrt_plan"`, with `cc_model_filenames` when engines for several
compute capabilities are listed, and the plugin library copied when they were built with it.
TensorRT-RTX engines are not served by Triton's TensorRT backend (it links TensorRT, whose engines
RTX engines are not): build with `--backend tensorrt` for Triton, or serve the ONNX.

Inputs and outputs come from the files: an ONNX's graph inputs and outputs (names, element
types, dimensions after the batch dimension), an engine's from its build record (`io`: the
network TensorRT built, read by the build), else from the ONNX it was built from. A graph input
with only the batch dimension (the `threshold` [B] of a threshold-input entry) is declared
`dims: [1]` with `reshape: { shape: [] }`, Triton's form for it. Every `config.pbtxt` is built as
Triton's own `ModelConfig` protobuf message (tritonclient's `model_config_pb2`), written as text and
parsed back before it is written. Every file is read through the artifact layer (sha256-checked,
inside the folder) with the folder's lock held; the repository is written beside REPO and moved
into place when complete.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional, Sequence

from algm_export.core.errors import ArtifactError, BackendUnavailable, ConfigError

MARKER = ".algm-triton-repo"
#: ONNX TensorProto element types -> Triton data types
ONNX_TYPES = {1: "TYPE_FP32", 10: "TYPE_FP16", 6: "TYPE_INT32", 7: "TYPE_INT64", 9: "TYPE_BOOL", 2: "TYPE_UINT8",
              3: "TYPE_INT8", 11: "TYPE_FP64", 16: "TYPE_BF16"}
#: TensorRT dtype names (as the build records them) -> Triton data types
TRT_TYPES = {"float": "TYPE_FP32", "float32": "TYPE_FP32", "half": "TYPE_FP16", "float16": "TYPE_FP16",
             "int32": "TYPE_INT32", "int64": "TYPE_INT64", "bool": "TYPE_BOOL", "int8": "TYPE_INT8",
             "uint8": "TYPE_UINT8", "bf16": "TYPE_BF16", "bfloat16": "TYPE_BF16"}
REPO_BACKENDS = ("onnxruntime", "tensorrt")
DEVICES = ("auto", "cpu", "gpu")


DEFAULT_MAX_BATCH = 8


@dataclass
class RepoOptions:
    backend: str = "onnxruntime"
    precision: str = "fp32"
    max_batch: Optional[int] = None     # None: DEFAULT_MAX_BATCH, or 1 for a folder for one image per run
    max_queue_delay_us: int = 500
    instances: int = 1
    device: str = "auto"
    only: Optional[Sequence[str]] = None
    force: bool = False
    wait: bool = False


@dataclass
class Tensor:
    name: str
    data_type: str
    dims: list  # with the batch dimension first (-1 where it is dynamic)


def config_proto():
    """Triton's `ModelConfig` protobuf module (tritonclient's copy of model_config.proto)."""
    try:
        from tritonclient.grpc import model_config_pb2
    except ImportError as e:
        raise BackendUnavailable(f"triton-repo checks every config.pbtxt against Triton's ModelConfig, which comes "
                                 f"with tritonclient ({e.name} is missing): pip install 'algm-export[serve]'") from None
    return model_config_pb2


# --------------------------------------------------------------------------- reading the files

def onnx_io(path) -> tuple[list[Tensor], list[Tensor]]:
    """The graph inputs (initializers excluded) and outputs of an ONNX file (sha256-checked by the caller)."""
    import onnx

    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception as e:  # noqa: BLE001  (a corrupt file: protobuf errors of every kind)
        raise ArtifactError(f"{path} is not a readable ONNX model ({type(e).__name__}); re-export it") from None
    inits = {i.name for i in graph.initializer}

    def tensor(v) -> Tensor:
        tt = v.type.tensor_type
        if tt.elem_type not in ONNX_TYPES:
            raise ArtifactError(f"{path}: {v.name} has ONNX element type {tt.elem_type}, which Triton has no type "
                                "for; re-export the folder")
        dims = [int(d.dim_value) if d.HasField("dim_value") else -1 for d in tt.shape.dim]
        return Tensor(v.name, ONNX_TYPES[tt.elem_type], dims)

    return [tensor(v) for v in graph.input if v.name not in inits], [tensor(v) for v in graph.output]


def record_io(rec, fallback) -> tuple[list[Tensor], list[Tensor]]:
    """An engine's inputs and outputs from its build record's `io` (checked as untrusted data), else
    `fallback()` (the ONNX it was built from)."""
    io = rec.raw.get("io")
    if not io:
        return fallback()
    try:
        out = []
        for key in ("inputs", "outputs"):
            out.append([Tensor(str(n), TRT_TYPES[str(d["dtype"]).lower()], [int(v) for v in d["shape"]])
                        for n, d in io[key].items()])
        return out[0], out[1]
    except (KeyError, TypeError, ValueError, AttributeError):
        raise ArtifactError(f"manifest.json: the engine record of {rec.setting} has an `io` that is not "
                            "{inputs|outputs: {name: {dtype, shape}}} of known types; rebuild the engine "
                            "(`algm-export build DIR`)") from None


# --------------------------------------------------------------------------- config.pbtxt

def model_config(name: str, platform: str, inputs: Sequence[Tensor], outputs: Sequence[Tensor], max_batch: int,
                 max_queue_delay_us: int, instances: int, kind: Optional[str], filename: str,
                 cc_filenames: Optional[dict] = None) -> dict:
    """The config of one model as a dict in `ModelConfig`'s JSON form. Batched when every input and
    output has a dynamic first dimension (then dims drop it), else max_batch_size 0 and full dims."""
    batched = all(t.dims and t.dims[0] == -1 for t in list(inputs) + list(outputs))

    def io(t: Tensor, is_input: bool) -> dict:
        dims = t.dims[1:] if batched else t.dims
        d = {"name": t.name, "data_type": t.data_type, "dims": dims or [1]}
        if not dims:  # only the batch dimension: Triton's form is dims [1] reshaped to []
            d["reshape"] = {"shape": []}
        return d

    cfg = {"name": name, "platform": platform, "max_batch_size": max_batch if batched else 0,
           "input": [io(t, True) for t in inputs], "output": [io(t, False) for t in outputs],
           "instance_group": [{"count": instances, **({"kind": kind} if kind else {})}],
           "default_model_filename": filename}
    if batched:
        cfg["dynamic_batching"] = {"max_queue_delay_microseconds": max_queue_delay_us}
    if cc_filenames:
        cfg["cc_model_filenames"] = dict(cc_filenames)
    return cfg


def config_text(cfg: dict) -> str:
    """`cfg` as config.pbtxt text, once it is a valid Triton `ModelConfig` (ConfigError naming the
    problem otherwise): built as the protobuf message, written as text and parsed back unchanged."""
    from google.protobuf import json_format, text_format

    pb = config_proto()
    try:
        msg = json_format.ParseDict(cfg, pb.ModelConfig())
    except json_format.ParseError as e:
        raise ConfigError(f"config of model {cfg.get('name')!r} is not a Triton ModelConfig: {e}") from None
    text = text_format.MessageToString(msg)
    back = pb.ModelConfig()
    text_format.Parse(text, back)
    if back != msg:
        raise ConfigError(f"config of model {cfg.get('name')!r} does not survive a text round trip")
    problems = check_config(back)
    if problems:
        raise ConfigError(f"config of model {cfg.get('name')!r}: " + "; ".join(problems))
    return text


def check_config(msg) -> list[str]:
    """What Triton would refuse in a parsed `ModelConfig` that the protobuf types do not catch."""
    pb = config_proto()
    out = []
    if not msg.name or not msg.platform:
        out.append("name and platform are required")
    if msg.max_batch_size < 0:
        out.append("max_batch_size must be >= 0")
    for kind, tensors in (("input", msg.input), ("output", msg.output)):
        if not tensors:
            out.append(f"no {kind}")
        for t in tensors:
            if t.data_type == pb.TYPE_INVALID:
                out.append(f"{kind} {t.name}: no data_type")
            if not t.dims or any(d == 0 or d < -1 for d in t.dims):
                out.append(f"{kind} {t.name}: dims {list(t.dims)} (each > 0 or -1, at least one)")
    return out


# --------------------------------------------------------------------------- the repository

def _kind(device: str, backend: str) -> Optional[str]:
    if device not in DEVICES:
        raise ConfigError(f"--device {device!r}: use one of {', '.join(DEVICES)}")
    if backend == "tensorrt":
        if device == "cpu":
            raise ConfigError("--device cpu: TensorRT engines run on a GPU; use --device gpu (or auto), or "
                              "--backend onnxruntime for CPU instances")
        return "KIND_GPU"
    return {"auto": None, "cpu": "KIND_CPU", "gpu": "KIND_GPU"}[device]


def _cc_key(cc) -> str:
    """86 -> "8.6" (Triton's form of a compute capability)."""
    s = str(cc).replace("sm_", "").replace("sm", "").replace(".", "")
    if not s.isdigit() or len(s) < 2:
        raise ArtifactError(f"manifest.json: compute capability {cc!r} of an engine record is not like 86; rebuild "
                            "the engine (`algm-export build DIR`)")
    return f"{s[:-1]}.{s[-1]}"


def _engine_files(entry, precision: str) -> list:
    """The entry's TensorRT engine records of `precision`, one per compute capability (the first listed)."""
    recs = entry.engines(precision, backend="tensorrt")
    if not recs:
        rtx = entry.engines(precision, backend="tensorrt-rtx")
        hint = (" (it has TensorRT-RTX engines, which Triton's TensorRT backend does not run)" if rtx else "")
        raise ArtifactError(f"{entry.name} has no {precision} TensorRT engine{hint}; build them with "
                            f"`algm-export build DIR --backend tensorrt --precision {precision}` on the GPU that will "
                            "serve them, or write the ONNX entries with --backend onnxruntime")
    by_cc: dict = {}
    for r in recs:
        ccs = r.raw.get("compute_capabilities") or [(r.raw.get("device") or {}).get("compute_capability")]
        key = _cc_key(ccs[0]) if ccs and ccs[0] is not None else None
        by_cc.setdefault(key, r)
    return list(by_cc.items())


def write_repository(export_dir, out, options: RepoOptions = RepoOptions(), progress=None) -> dict:
    """Write the model repository (see the module doc); returns a summary {"out", "models": [...]}."""
    from algm_export.artifacts import ExportFolder, folder_lock
    from algm_export.runtimes.registry import normalize_backend
    from algm_export.runtimes.triton.names import triton_names

    backend = normalize_backend(options.backend)
    if backend == "tensorrt-rtx":
        raise ConfigError("--backend tensorrt-rtx: Triton's TensorRT backend runs TensorRT engines, not TensorRT-RTX "
                          "ones; build engines with `algm-export build DIR --backend tensorrt`, or write the ONNX "
                          "entries with --backend onnxruntime")
    if backend not in REPO_BACKENDS:
        raise ConfigError(f"--backend {backend}: a Triton repository holds {', '.join(REPO_BACKENDS)} models")
    for value, option in ((options.max_batch, "--max-batch"), (options.instances, "--instances")):
        if value is not None and value < 1:
            raise ConfigError(f"{option} {value}: give at least 1")
    if options.max_queue_delay_us < 0:
        raise ConfigError(f"--max-queue-delay-us {options.max_queue_delay_us}: give 0 or more microseconds")
    kind = _kind(options.device, backend)
    config_proto()
    out = Path(out)
    folder = ExportFolder.load(export_dir)
    if _inside(out, folder.path):
        raise ConfigError(f"--out {out}: the repository cannot be inside the export folder {folder.path}; "
                          "choose a folder outside it")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not (out / MARKER).is_file():
            raise ConfigError(f"--out {out} exists and is not an empty folder or an earlier triton-repo output; "
                              "choose another --out")
        if not options.force:
            raise ConfigError(f"--out {out} holds an earlier repository; pass --force to replace it")
    if folder.batch == 1 and options.max_batch not in (None, 1):
        raise ConfigError(f"--max-batch {options.max_batch}: {folder.path} holds graphs for one image per run "
                          "(exported with --batch 1), which Triton serves without batching; leave --max-batch out, "
                          "or re-export without --batch to batch on the server")
    options = replace(options, max_batch=options.max_batch or folder.batch or DEFAULT_MAX_BATCH)
    entries = folder.select(options.only)
    names = triton_names([e.name for e in entries])
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    summary = {"out": str(out), "backend": backend, "precision": options.precision, "models": [], "plugins": None,
               "tensorrt_versions": []}
    try:
        with folder_lock(folder.path, "triton-repo", options.wait):
            for i, e in enumerate(entries):
                m = _write_model(tmp, folder, e, names[e.name], backend, kind, options, summary)
                summary["models"].append(m)
                if progress:
                    progress(f"[{i + 1}/{len(entries)}] {m['name']}: {m['platform']} "
                             f"({', '.join(m['files'])})")
        (tmp / "README.md").write_text(readme(folder, summary, options))
        (tmp / MARKER).write_text("written by algm-export triton-repo\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return summary


def _inside(path: Path, folder: Path) -> bool:
    try:
        Path(os.path.abspath(path)).relative_to(Path(os.path.abspath(folder)))
        return True
    except ValueError:
        return False


def _write_model(root: Path, folder, entry, name: str, backend: str, kind, options: RepoOptions,
                 summary: dict) -> dict:
    mdir = root / "models" / name
    (mdir / "1").mkdir(parents=True)
    cc_files = None
    if backend == "onnxruntime":
        src = entry.onnx_path(options.precision)   # sha256-checked, inside the folder
        inputs, outputs = onnx_io(src)
        filename, platform = "model.onnx", "onnxruntime_onnx"
        shutil.copyfile(src, mdir / "1" / filename)
        files = [filename]
    else:
        platform = "tensorrt_plan"
        picked = _engine_files(entry, options.precision)
        rec0 = picked[0][1]
        inputs, outputs = record_io(rec0, lambda: onnx_io(_built_from(folder, entry, rec0, options.precision)))
        files = []
        if len(picked) == 1:
            filename = "model.plan"
            shutil.copyfile(rec0.engine_path(), mdir / "1" / filename)
            files.append(filename)
        else:
            cc_files = {}
            for cc, rec in picked:
                fn = f"model_sm{cc.replace('.', '')}.plan" if cc else "model.plan"
                shutil.copyfile(rec.engine_path(), mdir / "1" / fn)
                files.append(fn)
                if cc:
                    cc_files[cc] = fn
            filename = files[0]
        for _, rec in picked:
            _note_engine(root, rec, summary)
        profile_max = min(int((rec.raw.get("profile") or [1, 1, options.max_batch])[2]) for _, rec in picked)
        if options.max_batch > profile_max:
            raise ConfigError(f"--max-batch {options.max_batch}: the engines of {entry.name} take batches of at "
                              f"most {profile_max} (their profile); use --max-batch {profile_max} or rebuild with a "
                              "larger batch")
    cfg = model_config(name, platform, inputs, outputs, options.max_batch, options.max_queue_delay_us,
                       options.instances, kind, filename, cc_files)
    (mdir / "config.pbtxt").write_text(config_text(cfg))
    return {"entry": entry.name, "name": name, "platform": platform, "files": files,
            "inputs": [{k: t[k] for k in ("name", "data_type", "dims")} for t in cfg["input"]],
            "outputs": [{k: t[k] for k in ("name", "data_type", "dims")} for t in cfg["output"]],
            "max_batch_size": cfg["max_batch_size"]}


def _built_from(folder, entry, rec, precision: str):
    """The ONNX an engine was built from (its record's `onnx`, sha256-checked), else the entry's."""
    if rec.raw.get("onnx") and rec.raw.get("onnx_sha256"):
        return folder.verify(rec.raw["onnx"], rec.raw["onnx_sha256"], f"ONNX of the engine of {entry.name}")
    return entry.onnx_path(precision)


def _note_engine(root: Path, rec, summary: dict) -> None:
    """Copy the engine's plugin library once (REPO/plugins/) and note the TensorRT version it needs."""
    v = rec.raw.get("backend_version")
    if v and v not in summary["tensorrt_versions"]:
        summary["tensorrt_versions"].append(v)
    lib = rec.plugin_path()  # sha256-checked
    if lib is None:
        return
    dest = root / "plugins" / Path(lib).name
    if summary["plugins"] is None:
        dest.parent.mkdir(exist_ok=True)
        shutil.copyfile(lib, dest)
        summary["plugins"] = {"file": f"plugins/{dest.name}", "sha256": rec.raw.get("plugin_sha256"),
                              "tensorrt_version": v}
    elif summary["plugins"]["sha256"] != rec.raw.get("plugin_sha256"):
        raise ArtifactError(f"the engines were built with two different plugin libraries ({summary['plugins']['file']} "
                            f"and {rec.raw.get('plugin_library')}); rebuild them with one (`algm-export build DIR`)")


def readme(folder, summary: dict, options: RepoOptions) -> str:
    """REPO/README.md: what the repository holds and the exact server command."""
    info = folder.model_info
    h, w = info["image_size"]
    lines = [f"# Triton model repository: {info.get('backbone')} {h}x{w} ({info.get('n_cls')} classes)", "",
             f"Written by `algm-export triton-repo` from the export folder `{folder.path.name}` "
             f"({summary['backend']}, {summary['precision']}). One model per entry:", "",
             "| model | entry | platform | inputs | outputs | max batch |", "|---|---|---|---|---|---|"]
    def io(ts):
        return ", ".join(f"`{t['name']}` {t['data_type'][5:]} {t['dims']}" for t in ts)

    for m in summary["models"]:
        lines.append(f"| `{m['name']}` | `{m['entry']}` | {m['platform']} | {io(m['inputs'])} | {io(m['outputs'])} "
                     f"| {m['max_batch_size']} |")
    lines += ["", "Shapes are as in config.pbtxt: per request item where the model batches (a request's first "
              "dimension is its batch). `image` is the normalised "
              "picture (the model's mean/std), `logits` the class scores per pixel, `merge_stats` the merges and "
              "forced merges per ALGM step; a threshold-input model also takes `threshold` (one CLAP threshold "
              "per image, within [-1, 1]).", "", "## Run it", ""]
    image = "nvcr.io/nvidia/tritonserver:<yy.mm>-py3"
    gpus = "--gpus all " if summary["backend"] == "tensorrt" or options.device == "gpu" else ""
    plug = summary.get("plugins")
    if summary["backend"] == "onnxruntime":
        lines += ["The ONNX files run in Triton's ONNX Runtime backend as they are: the ALGM operators carry their "
                  "ONNX function bodies, so no native code is needed.", "", "```bash",
                  f"docker run --rm {gpus}-p 8000:8000 -p 8001:8001 -p 8002:8002 -v \"$PWD\":/repo {image} \\",
                  "  tritonserver --model-repository=/repo/models", "```"]
    else:
        versions = ", ".join(summary["tensorrt_versions"]) or "the version the engines were built with"
        lines += [f"The engines were built with TensorRT {versions}: use a Triton container whose TensorRT is "
                  "exactly that version (NVIDIA's support matrix lists the TensorRT of each release), on a GPU of "
                  "the compute capability they were built for (`cc_model_filenames` in config.pbtxt picks the "
                  "file per GPU when there are several).", ""]
        if plug:
            lines += [f"They use the ALGM plugin library `{plug['file']}` (built against TensorRT "
                      f"{plug.get('tensorrt_version') or versions}; sha256 {plug['sha256']}). Load it in the "
                      "server, either through the TensorRT backend's option:", "", "```bash",
                      f"docker run --rm {gpus}-p 8000:8000 -p 8001:8001 -p 8002:8002 -v \"$PWD\":/repo {image} \\",
                      "  tritonserver --model-repository=/repo/models \\",
                      f"  --backend-config=tensorrt,plugins=/repo/{plug['file']}",
                      "```", "", "or preloaded into the server process:", "", "```bash",
                      f"docker run --rm {gpus}-p 8000:8000 -p 8001:8001 -p 8002:8002 -v \"$PWD\":/repo \\",
                      f"  -e LD_PRELOAD=/repo/{plug['file']} {image} tritonserver --model-repository=/repo/models",
                      "```"]
        else:
            lines += ["They need no plugin library (the ALGM operators are TensorRT layers).", "", "```bash",
                      f"docker run --rm {gpus}-p 8000:8000 -p 8001:8001 -p 8002:8002 -v \"$PWD\":/repo {image} \\",
                      "  tritonserver --model-repository=/repo/models", "```"]
    lines += ["", "Check it: `curl -s localhost:8000/v2/health/ready -w '%{http_code}\\n'` and "
              f"`curl -s localhost:8000/v2/models/{summary['models'][0]['name']}/config`; a client: "
              "`python examples/triton_client.py photo.jpg --url localhost:8000 --model "
              f"{summary['models'][-1]['name']}` (in the algm-export source).", ""]
    return "\n".join(lines)
