"""Engine building: ONNX -> TensorRT network -> serialised engine (runs inside the worker).

`build_engine(job)` takes the JSON job described in ``worker.py`` and returns the serialised
engine and a result dict. It is meant to run in a child process started with
`loader.rtx_env()` (see the RTX quirk in ``loader.py``); the parent (``algm_export.tasks.build``)
never parses ONNX with TensorRT itself.

Custom ``algm`` nodes:

* no plugin library: the model's ``algm`` model-local functions are used. The parser inlines
  local functions; if it refuses an ``algm`` node anyway, the model is inlined with
  ``onnx.inliner`` and parsed again. The record says which happened.
* with a plugin library: the library is registered (``getCreators``), the ``algm`` function
  bodies are removed from the model so the parser cannot fall back to them, and the build
  fails unless every ``algm`` node became a ``PLUGIN_V3`` layer.

Dynamic token mode (``algm`` version 2, plugin version "2"): the token axis after every merge
step is a data-dependent shape. Without plugins the parser takes the function bodies' ``Slice``
with a computed end as one (``NonZero`` is refused by TensorRT-RTX 1.7: it needs a NonZero
plugin it does not ship); with plugins every step declares its token dimension through a size
tensor. The graph inputs other than ``image`` (``threshold`` [B] of a threshold-input export)
get the same batch range in the optimisation profile.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

from algm_export.core.errors import AlgmError, BackendUnavailable, ConfigError
from algm_export.runtimes.tensorrt.loader import (creator_names, import_backend, load_plugin_library,
                                                  make_logger, normalize_backend)

ALGM_DOMAIN = "algm"


class EngineBuildError(AlgmError):
    """TensorRT could not parse the ONNX or build the engine (or its worker crashed)."""


# --------------------------------------------------------------------------- ONNX side

def algm_nodes(model) -> list[tuple[str, str]]:
    """(node name, op_type) of every ``algm``-domain node in the main graph and its subgraphs."""
    out = []

    def walk(graph):
        for node in graph.node:
            if node.domain == ALGM_DOMAIN:
                out.append((node.name, node.op_type))
            for attr in node.attribute:
                if attr.HasField("g"):
                    walk(attr.g)
                for g in attr.graphs:
                    walk(g)

    walk(model.graph)
    return out


def algm_node_versions(model) -> set[tuple[str, str]]:
    """(op_type, plugin_version) of every ``algm`` node of the main graph ("1" static, "2" dynamic)."""
    out = set()
    for node in model.graph.node:
        if node.domain == ALGM_DOMAIN:
            v = next((a.s.decode() for a in node.attribute if a.name == "plugin_version"), "1")
            out.add((node.op_type, v))
    return out


def strip_algm_functions(model) -> int:
    """Remove the ``algm`` model-local functions (in place); returns how many were removed."""
    keep = [f for f in model.functions if f.domain != ALGM_DOMAIN]
    removed = len(model.functions) - len(keep)
    del model.functions[:]
    model.functions.extend(keep)
    return removed


# --------------------------------------------------------------------------- parsing

def _parser_errors(parser) -> list[dict]:
    errs = []
    for i in range(parser.num_errors):
        e = parser.get_error(i)
        item = {"text": str(e)}
        for key, getter in (("node", "node"), ("name", "node_name"), ("op", "node_operator"),
                            ("desc", "desc")):
            try:
                item[key] = getattr(e, getter)()
            except Exception:
                pass
        errs.append(item)
    return errs


def _parse(trt, builder, logger, model, onnx_path: str, strongly_typed: bool):
    flags = 0
    if strongly_typed and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    ok = parser.parse(model.SerializeToString(), str(onnx_path))
    return network, parser, ok, _parser_errors(parser)


def _parse_error(onnx_path: str, errors: list[dict], plugins: bool) -> EngineBuildError:
    lines = []
    for e in errors:
        op = e.get("op") or "?"
        name = e.get("name") or "(unnamed)"
        desc = e.get("desc") or e["text"]
        if "Plugin not found" in e["text"] or "No importer registered" in e["text"]:
            hint = (f"op {op!r} is not a standard ONNX op, the model has no function body for it "
                    "and no plugin provides it")
            hint += (" (the plugin library does not register it)" if plugins else
                     "; pass a plugin library (--plugins) or re-export the model")
            lines.append(f"node {name}: {hint}")
        else:
            lines.append(f"node {name} (op {op}): {desc}")
    return EngineBuildError(f"TensorRT could not parse {onnx_path}:\n  " + "\n  ".join(lines or ["unknown parser error"]))


# --------------------------------------------------------------------------- network summary

def _plugin_id(trt, layer) -> str | None:
    """"namespace::name/version" of a plugin layer's plugin, when the bindings expose it."""
    try:
        layer.__class__ = trt.IPluginV3Layer
        core = layer.plugin.get_capability_interface(trt.PluginCapabilityType.CORE)
        return f"{core.plugin_namespace}::{core.plugin_name}/{core.plugin_version}"
    except Exception:
        return None


def summarize_network(trt, network, nodes: list[tuple[str, str]]) -> dict:
    by_type: Counter = Counter()
    plugin_layers = []
    half = 0
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        t = str(layer.type).rsplit(".", 1)[-1]
        by_type[t] += 1
        for j in range(layer.num_outputs):
            if layer.get_output(j).dtype == trt.DataType.HALF:
                half += 1
        if t in ("PLUGIN_V3", "PLUGIN_V2", "PLUGIN"):
            plugin_layers.append({"layer": layer.name, "type": t, "plugin": _plugin_id(trt, layer)})
    algm_ops = sorted({op for _, op in nodes})
    as_plugins = [p for p in plugin_layers if p["type"] == "PLUGIN_V3" and p["plugin"]
                  and p["plugin"].startswith(f"{ALGM_DOMAIN}::")
                  and p["plugin"].split("::", 1)[1].split("/")[0] in algm_ops]
    return {
        "count": network.num_layers,
        "by_type": dict(sorted(by_type.items())),
        "half_outputs": half,
        "algm_nodes": len(nodes),
        "algm_ops": dict(sorted(Counter(op for _, op in nodes).items())),
        "plugin_layers": plugin_layers,
        "algm_plugin_layers": len(as_plugins),
    }


def _io(trt, network) -> dict:
    def desc(t):
        return {"dtype": str(t.dtype).rsplit(".", 1)[-1].lower(), "shape": list(t.shape)}

    return {"inputs": {network.get_input(i).name: desc(network.get_input(i)) for i in range(network.num_inputs)},
            "outputs": {network.get_output(i).name: desc(network.get_output(i)) for i in range(network.num_outputs)}}


# --------------------------------------------------------------------------- config

def _profile(builder, network, input_name: str, batch: list[int]):
    """One profile over the batch: every input whose first dimension is dynamic (``image``, and the
    ``threshold`` [B] of a threshold-input export) gets (min, opt, max) = `batch` there."""
    names = [network.get_input(i).name for i in range(network.num_inputs)]
    if input_name not in names:
        raise ConfigError(f"the ONNX has no input {input_name!r} (inputs: {', '.join(names)}).")
    lo, opt, hi = (int(b) for b in batch)
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        t = network.get_input(i)
        shape = list(t.shape)
        if any(d < 0 for d in shape[1:]):
            raise ConfigError(f"input {t.name} has dynamic dimensions besides the batch {shape}; "
                              "only the batch may be dynamic: re-export with a fixed image size.")
        if not shape or shape[0] >= 0:
            if t.name == input_name and shape and (lo, opt, hi) != (shape[0],) * 3:
                raise ConfigError(f"the ONNX fixes the batch of {t.name} to {shape[0]}; re-export "
                                  f"with a dynamic batch or build with batch=({shape[0]}, {shape[0]}, {shape[0]}).")
            continue
        profile.set_shape(t.name, [lo] + shape[1:], [opt] + shape[1:], [hi] + shape[1:])
    return profile


def _set_compute_capabilities(trt, config, ccs: list[int]) -> None:
    if not hasattr(config, "set_compute_capability"):
        raise ConfigError("compute capability targets apply to TensorRT-RTX only; full TensorRT "
                          "builds for the GPU present.")
    members = trt.ComputeCapability.__members__
    enums = []
    for cc in ccs:
        key = f"SM{int(cc)}"
        if key not in members:
            known = sorted(int(k[2:]) for k in members if k.startswith("SM"))
            raise ConfigError(f"TensorRT-RTX {trt.__version__} cannot target compute capability "
                              f"{cc}; it supports {known}.")
        enums.append(members[key])
    config.num_compute_capabilities = len(enums)
    for i, e in enumerate(enums):
        if not config.set_compute_capability(e, i):
            raise ConfigError(f"TensorRT-RTX refused compute capability target {ccs[i]}.")


# --------------------------------------------------------------------------- build

def build_engine(job: dict):
    """Parse `job["onnx"]` and build. Returns (serialised engine buffer, result dict).

    Raises AlgmError subclasses (ConfigError, BackendUnavailable, EngineBuildError).
    """
    import onnx

    backend = normalize_backend(job["backend"])
    rtx = backend == "tensorrt-rtx"
    trt = import_backend(backend)
    logger = make_logger(trt, job.get("log_level", "error"))
    onnx_path = str(Path(job["onnx"]).resolve())
    try:
        model = onnx.load(onnx_path, load_external_data=False)
    except Exception as e:  # protobuf's DecodeError and friends
        raise EngineBuildError(f"{onnx_path} is not a readable ONNX model ({type(e).__name__}: {e}); "
                               "re-export it.") from e
    nodes = algm_nodes(model)
    versions = {v for _, v in algm_node_versions(model)}
    plugin_lib = job.get("plugin_library")
    weak_ok = not rtx and hasattr(trt.BuilderFlag, "FP16")  # TensorRT 10; RTX and TensorRT 11 are strongly typed
    strongly_typed = not weak_ok or bool(job.get("strongly_typed", True))
    result: dict = {"backend": backend, "backend_version": str(trt.__version__),
                    "token_mode": ("dynamic" if versions == {"2"} else "static" if versions == {"1"}
                                   else None if not versions else "mixed")}

    # Plugin mode: a library to register, or (job["registered_plugins"]) creators that the
    # calling process already registered, e.g. TensorRT Python plugins.
    use_plugins = bool(plugin_lib) or bool(job.get("registered_plugins"))
    creators: list[str] = []
    if use_plugins:
        if plugin_lib:
            creators = load_plugin_library(trt, plugin_lib)
        else:
            creators = sorted(c for c in creator_names(trt.get_plugin_registry())
                              if c.startswith(f"{ALGM_DOMAIN}::"))
        provided = {tuple(c.split("::", 1)[1].split("/", 1)) for c in creators if c.startswith(f"{ALGM_DOMAIN}::")}
        missing = sorted(algm_node_versions(model) - provided)
        if missing:
            raise BackendUnavailable(
                f"plugin library {plugin_lib or '(registered plugins)'} does not register "
                f"{', '.join(f'{op}/{v}' for op, v in missing)} in namespace {ALGM_DOMAIN!r} (it registered: "
                f"{', '.join(creators) or 'nothing'}); version 2 is the dynamic token mode: rebuild the "
                "plugin library from this checkout.")
        if job.get("strip_functions", True):
            result["functions_removed"] = strip_algm_functions(model)
    result["plugin_creators"] = creators

    builder = trt.Builder(logger)
    t0 = time.perf_counter()
    network, parser, ok, errors = _parse(trt, builder, logger, model, onnx_path, strongly_typed)
    how = ("plugins" if use_plugins else "parser") if nodes else "none"
    if not ok and not use_plugins and nodes and any(f.domain == ALGM_DOMAIN for f in model.functions):
        # The parser did not inline the algm functions itself: inline them with onnx and retry.
        from onnx import inliner

        inlined = inliner.inline_local_functions(model)
        del parser, network
        network, parser, ok, errors = _parse(trt, builder, logger, inlined, onnx_path, strongly_typed)
        how = "onnx-inliner"
    if not ok:
        raise _parse_error(onnx_path, errors, use_plugins)
    result["parse_seconds"] = round(time.perf_counter() - t0, 3)
    result["functions"] = how

    summary = summarize_network(trt, network, nodes)
    if use_plugins and summary["algm_plugin_layers"] != len(nodes):
        raise EngineBuildError(
            f"{len(nodes)} algm nodes in {onnx_path}, but only {summary['algm_plugin_layers']} became "
            f"PLUGIN_V3 layers (plugin layers: {summary['plugin_layers']}); the plugin library was "
            "not used for every node.")
    result["layers"] = summary
    result["io"] = _io(trt, network)

    config = builder.create_builder_config()
    profile = _profile(builder, network, job.get("input", "image"), job.get("profile", [1, 1, 1]))
    config.add_optimization_profile(profile)
    if job.get("workspace_mb"):
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(job["workspace_mb"]) << 20)
    ccs = list(job.get("compute_capabilities") or [])
    if ccs:
        _set_compute_capabilities(trt, config, ccs)
    if job.get("fp16_flag"):
        if strongly_typed:
            raise ConfigError(f"{trt.__name__} {trt.__version__} builds strongly typed networks only (no "
                              "FP16 builder flag): precision comes from the ONNX; re-export with --precision fp16.")
        config.set_flag(trt.BuilderFlag.FP16)
    if not job.get("tf32", False) and hasattr(trt.BuilderFlag, "TF32"):
        # On by default; it would run fp32 matmuls (the merge similarity math included) in TF32.
        config.clear_flag(trt.BuilderFlag.TF32)
    result["tf32"] = bool(job.get("tf32", False))
    result["strongly_typed"] = strongly_typed
    result["profile"] = [int(b) for b in job.get("profile", [1, 1, 1])]

    t0 = time.perf_counter()
    engine = builder.build_serialized_network(network, config)
    result["build_seconds"] = round(time.perf_counter() - t0, 3)
    if engine is None or engine.nbytes == 0:
        errs = logger.errors()[-8:]
        raise EngineBuildError(f"TensorRT failed to build an engine from {onnx_path}:\n  "
                               + "\n  ".join(errs or ["(no error message from TensorRT)"]))
    result["engine_bytes"] = int(engine.nbytes)
    warnings = [m for s, m in logger.messages if s == "warning"]
    result["warnings"] = warnings[-20:]
    return engine, result
