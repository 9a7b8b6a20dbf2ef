"""Export any model family (baseline) or its ALGM form (static or dynamic token mode) to ONNX.

Graph interface: input `image` float32 [B, 3, H, W] (dynamic batch, or 1 for a graph exported for
one image per run, `batch=1`; fixed H, W) and, for a
dynamic model exported with `threshold_input=True`, `threshold` float32 [B] (CLAP's threshold,
one per image); outputs `logits` float32 [B, n_cls, H, W] and, for ALGM, `merge_stats` int32
[B, steps, 2] (merges done, forced merges per merge step; `merging.static.tokens_from_stats`
turns them into the real token counts).

The merge steps are single `algm::AlgmClap` / `algm::AlgmGbm` nodes carrying the plugin
attributes: `algm` version 1 (static, capacities) or version 2 (dynamic token mode: a
data-dependent token axis). Their behaviour is attached as model-local functions
(`functions.py`), so ONNX Runtime runs the file with no native code. `inline=True` writes the
plain standard-op graph.
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from pathlib import Path

import onnx
import torch
import torch.nn as nn

from algm_export.core.errors import ConfigError
from algm_export.core.names import FIXED_BATCHES
from algm_export.core.progress import stage
from algm_export.export import functions
from algm_export.merging import ops  # noqa: F401  (registers torch.ops.algm.*)
from algm_export.export.schemas import register_schemas
from algm_export.merging.driver import AlgmModel
from algm_export.models.base import SegModel

ALGM_OPSET = functions.ALGM
ALGM_DYNAMIC_OPSET = functions.ALGM_DYNAMIC


def _clap_translation(x, grid_h, grid_w, window_h, window_w, num_prefix, capacity, threshold):
    return ALGM_OPSET.AlgmClap(x, grid_h=grid_h, grid_w=grid_w, window_h=window_h, window_w=window_w,
                               num_prefix=num_prefix, capacity=capacity, threshold=float(threshold),
                               plugin_version="1", plugin_namespace="algm")


def _gbm_translation(x, size, assign, num_prefix, capacity, divisor):
    return ALGM_OPSET.AlgmGbm(x, size, assign, num_prefix=num_prefix, capacity=capacity, divisor=float(divisor),
                              plugin_version="1", plugin_namespace="algm")


def _clap_dyn_translation(x, threshold, grid_h, grid_w, window_h, window_w, num_prefix):
    y, size, assign, stats, _slots = ALGM_DYNAMIC_OPSET.AlgmClap(
        x, threshold, grid_h=grid_h, grid_w=grid_w, window_h=window_h, window_w=window_w, num_prefix=num_prefix,
        plugin_version="2", plugin_namespace="algm")
    return y, size, assign, stats


def _gbm_dyn_translation(x, size, assign, num_prefix, divisor):
    y, osize, oassign, stats, _slots = ALGM_DYNAMIC_OPSET.AlgmGbm(
        x, size, assign, num_prefix=num_prefix, divisor=float(divisor), plugin_version="2", plugin_namespace="algm")
    return y, osize, oassign, stats


class _ExportBaseline(nn.Module):
    def __init__(self, model: SegModel):
        super().__init__()
        self.model = model

    def forward(self, image):
        return self.model(image)


class _ExportAlgm(nn.Module):
    def __init__(self, model: AlgmModel):
        super().__init__()
        self.model = model

    def forward(self, image):
        logits = self.model(image)
        return logits, self.model.stats_tensor


class _ExportAlgmThreshold(_ExportAlgm):
    def forward(self, image, threshold):
        logits = self.model(image, threshold)
        return logits, self.model.stats_tensor


def _export_program(module: nn.Module, image_size, batch: int, output_names, opset: int,
                    threshold_input: bool = False, fixed_batch: bool = False):
    """fixed_batch: the batch axis is `batch` in the graph (else a dynamic axis, traced at `batch`)."""
    register_schemas()
    H, W = image_size
    args = (torch.randn(batch, 3, H, W),)
    batch_dim = torch.export.Dim("batch", min=1, max=1024)
    shapes = ({0: batch_dim},)
    names = ["image"]
    if threshold_input:
        # distinct example thresholds, so that nothing is specialised to one value
        args += (torch.linspace(0.85, 0.95, batch),)
        shapes += ({0: batch_dim},)
        names.append("threshold")
    table = {torch.ops.algm.clap.default: _clap_translation, torch.ops.algm.gbm.default: _gbm_translation,
             torch.ops.algm.clap_dyn.default: _clap_dyn_translation,
             torch.ops.algm.gbm_dyn.default: _gbm_dyn_translation}
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        prog = torch.onnx.export(
            module.eval(), args, dynamo=True, custom_translation_table=table, opset_version=opset,
            input_names=names, output_names=list(output_names),
            dynamic_shapes=None if fixed_batch else shapes, optimize=True, verbose=False,
        )
    for m in module.modules():
        if isinstance(m, AlgmModel):
            m.reset_state()
    return prog.model  # the onnx_ir model: its weights are not serialised yet


def check_batch(batch) -> None:
    """ConfigError unless `batch` is None (a dynamic batch axis) or one of FIXED_BATCHES."""
    if batch is not None and batch not in FIXED_BATCHES:
        raise ConfigError(f"--batch {batch}: graphs take a dynamic batch (leave --batch out) or exactly one image "
                          "per run (--batch 1); runners split larger batches into single images")


def graph_batch(model: onnx.ModelProto) -> int | None:
    """The fixed batch of a graph's `image` input, None for a dynamic batch axis."""
    for i in model.graph.input:
        if i.name == "image":
            d = i.type.tensor_type.shape.dim
            return int(d[0].dim_value) if d and d[0].HasField("dim_value") else None
    return None


def token_mode_of(model: onnx.ModelProto) -> str | None:
    """"static" / "dynamic" for an ALGM graph (from its algm nodes), None for a baseline."""
    versions = set()
    for n in model.graph.node:
        if n.domain == functions.DOMAIN:
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
            v = attrs.get("plugin_version", b"1")
            versions.add(int(v.decode() if isinstance(v, bytes) else v))
    if not versions:
        return None
    if len(versions) > 1:
        raise ConfigError(f"the graph mixes algm node versions {sorted(versions)}; export it again")
    return functions.VERSIONS.get(versions.pop(), "unknown")


def attach_functions(model: onnx.ModelProto) -> onnx.ModelProto:
    """Add the `algm` FunctionProtos (once) and the `algm` opset import (version 1 or 2, from
    the nodes)."""
    used = {n.op_type for n in model.graph.node if n.domain == functions.DOMAIN}
    if not used:
        return model
    version = {"static": 1, "dynamic": 2}[token_mode_of(model)]
    have = {(f.domain, f.name) for f in model.functions}
    for f in functions.function_protos(version):
        if f.name in used and (f.domain, f.name) not in have:
            model.functions.append(f)
    imports = [o for o in model.opset_import if o.domain == functions.DOMAIN]
    if not imports:
        model.opset_import.append(onnx.helper.make_opsetid(functions.DOMAIN, version))
    elif imports[0].version != version:
        raise ConfigError(f"the graph imports algm version {imports[0].version} but its nodes are version {version}")
    return model


def inline_functions(model: onnx.ModelProto) -> onnx.ModelProto:
    """The plain standard-op graph: every model-local function inlined."""
    from onnx import inliner

    out = inliner.inline_local_functions(model)
    keep = [o for o in out.opset_import if o.domain != functions.DOMAIN]
    del out.opset_import[:]
    out.opset_import.extend(keep)
    return out


def check_model(model: onnx.ModelProto, strict: bool = True, saved_at=None) -> onnx.ModelProto:
    """onnx.checker full check and strict shape inference (run on a copy: the file is unchanged).
    saved_at: the file `model` was saved to, checked from there (a model with external data: the
    checker finds the data file beside it)."""
    onnx.checker.check_model(model if saved_at is None else str(saved_at), full_check=True)
    inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=strict, data_prop=True)
    for out in inferred.graph.output:
        dims = out.type.tensor_type.shape.dim
        for i, d in enumerate(dims):
            if i > 0 and not d.HasField("dim_value"):
                raise ConfigError(f"exported output {out.name!r} has a non-static dimension {i}: {d}")
    return inferred


def export_onnx(model, path: str | os.PathLike, image_size=None, inline: bool = False,
                opset: int = functions.OPSET_VERSION, example_batch: int = 2,
                threshold_input: bool = False, weights=None, batch: int | None = None) -> Path:
    """Export a `SegModel` (baseline) or a static / dynamic `AlgmModel` to `path` (atomically).

    batch: None (default): a dynamic batch axis; 1: a graph for one image per run (no padding mask in
    dynamic token mode, per-image weights as convolutions: docs/decisions.md item 59).
    threshold_input (dynamic token mode only): the graph takes CLAP's threshold as a second
    input `threshold` float32 [B] instead of a constant, so one file serves every threshold.
    weights: an `export.external.WeightStore` of the folder `path` lies in: the graph's large
    tensors go to its shared data file (ONNX external data, stored once by content) before the
    graph is serialised, so no second copy of the weights is ever made.
    """
    from algm_export.core.manifest import atomic_path

    if isinstance(model, AlgmModel):
        if not model.exportable:
            raise ConfigError("the reference ALGM model does not export: use static token mode "
                              "(apply_algm(model, setting, capacities=(C1, C2, ...))) or dynamic token mode "
                              "(apply_algm(model, setting, token_mode='dynamic'))")
        if threshold_input and not model.dynamic:
            raise ConfigError("threshold_input needs dynamic token mode: a static export's capacities are "
                              "calibrated for one threshold; use apply_algm(model, setting, token_mode='dynamic')")
        module = _ExportAlgmThreshold(model) if threshold_input else _ExportAlgm(model)
        outputs = ("logits", "merge_stats")
        cfg = model.cfg
    elif isinstance(model, SegModel):
        if threshold_input:
            raise ConfigError("threshold_input applies to dynamic ALGM models only, not to the baseline")
        module, outputs = _ExportBaseline(model), ("logits",)
        cfg = model.cfg
    else:
        raise TypeError(f"cannot export {type(model).__name__}")
    image_size = tuple(image_size or cfg.image_size)
    check_batch(batch)
    import onnx_ir as ir

    with stage(f"{Path(path).name}: torch.export and ONNX translation", announce=False):
        program = _export_program(module, image_size, example_batch if batch is None else batch, outputs, opset,
                                  threshold_input, fixed_batch=batch is not None)
    with stage(f"{Path(path).name}: weights out and serialisation", announce=False):
        if weights is not None:
            if Path(path).resolve().parent != weights.folder.resolve():
                raise ConfigError(f"{path}: an ONNX file with external data must lie in its data file's folder "
                                  f"{weights.folder}")
            weights.externalize(program)
        proto = ir.serde.serialize_model(program)
        del program
    proto = attach_functions(proto)
    if inline:
        proto = inline_functions(proto)
    proto.producer_name = "algm-export"
    path = Path(path)
    with stage(f"{path.name}: check and save", announce=False), atomic_path(path) as tmp:
        if weights is None:
            check_model(proto)
        onnx.save_model(proto, str(tmp))
        if weights is not None:
            check_model(proto, saved_at=tmp)
    return path
