"""Export any model family (baseline) or its static ALGM form to ONNX.

Graph interface: input `image` float32 [B, 3, H, W] (dynamic batch, fixed H, W); outputs
`logits` float32 [B, n_cls, H, W] and, for ALGM, `merge_stats` int32 [B, steps, 2]
(merges done, forced merges per merge step).

The merge steps are single `algm::AlgmClap` / `algm::AlgmGbm` nodes carrying the plugin
attributes; their behaviour is attached as model-local functions (`functions.py`), so ONNX
Runtime runs the file with no native code. `inline=True` writes the plain standard-op graph.
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

from algm_export.errors import ConfigError
from algm_export.export import functions, ops  # noqa: F401  (ops registers torch.ops.algm.*)
from algm_export.export.schemas import register_schemas
from algm_export.merging.patch import AlgmModel
from algm_export.models.base import SegModel

ALGM_OPSET = functions.ALGM


def _clap_translation(x, grid_h, grid_w, window_h, window_w, num_prefix, capacity, threshold):
    return ALGM_OPSET.AlgmClap(x, grid_h=grid_h, grid_w=grid_w, window_h=window_h, window_w=window_w,
                               num_prefix=num_prefix, capacity=capacity, threshold=float(threshold),
                               plugin_version="1", plugin_namespace="algm")


def _gbm_translation(x, size, assign, num_prefix, capacity, divisor):
    return ALGM_OPSET.AlgmGbm(x, size, assign, num_prefix=num_prefix, capacity=capacity, divisor=float(divisor),
                              plugin_version="1", plugin_namespace="algm")


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


def _export_program(module: nn.Module, image_size, batch: int, output_names, opset: int):
    register_schemas()
    H, W = image_size
    example = torch.randn(batch, 3, H, W)
    table = {torch.ops.algm.clap.default: _clap_translation, torch.ops.algm.gbm.default: _gbm_translation}
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        prog = torch.onnx.export(
            module.eval(), (example,), dynamo=True, custom_translation_table=table, opset_version=opset,
            input_names=["image"], output_names=list(output_names),
            dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=1024)},), optimize=True, verbose=False,
        )
    for m in module.modules():
        if isinstance(m, AlgmModel):
            m.reset_state()
    return prog.model_proto


def attach_functions(model: onnx.ModelProto) -> onnx.ModelProto:
    """Add the `algm` FunctionProtos (once) and the `algm` opset import."""
    used = {n.op_type for n in model.graph.node if n.domain == functions.DOMAIN}
    have = {(f.domain, f.name) for f in model.functions}
    for f in functions.function_protos():
        if f.name in used and (f.domain, f.name) not in have:
            model.functions.append(f)
    if used and not any(o.domain == functions.DOMAIN for o in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid(functions.DOMAIN, 1))
    return model


def inline_functions(model: onnx.ModelProto) -> onnx.ModelProto:
    """The plain standard-op graph: every model-local function inlined."""
    from onnx import inliner

    out = inliner.inline_local_functions(model)
    keep = [o for o in out.opset_import if o.domain != functions.DOMAIN]
    del out.opset_import[:]
    out.opset_import.extend(keep)
    return out


def check_model(model: onnx.ModelProto, strict: bool = True) -> onnx.ModelProto:
    """onnx.checker full check and strict shape inference (run on a copy: the file is unchanged)."""
    onnx.checker.check_model(model, full_check=True)
    inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=strict, data_prop=True)
    for out in inferred.graph.output:
        dims = out.type.tensor_type.shape.dim
        for i, d in enumerate(dims):
            if i > 0 and not d.HasField("dim_value"):
                raise ConfigError(f"exported output {out.name!r} has a non-static dimension {i}: {d}")
    return inferred


def export_onnx(model, path: str | os.PathLike, image_size=None, inline: bool = False,
                opset: int = functions.OPSET_VERSION, example_batch: int = 2) -> Path:
    """Export a `SegModel` (baseline) or a static `AlgmModel` to `path` (written atomically)."""
    from algm_export.manifest import atomic_path

    if isinstance(model, AlgmModel):
        if not model.static:
            raise ConfigError("only static ALGM models export: apply_algm(model, setting, capacities=(C1, C2, ...))")
        module, outputs = _ExportAlgm(model), ("logits", "merge_stats")
        cfg = model.cfg
    elif isinstance(model, SegModel):
        module, outputs = _ExportBaseline(model), ("logits",)
        cfg = model.cfg
    else:
        raise TypeError(f"cannot export {type(model).__name__}")
    image_size = tuple(image_size or cfg.image_size)
    proto = _export_program(module, image_size, example_batch, outputs, opset)
    proto = attach_functions(proto)
    if inline:
        proto = inline_functions(proto)
    proto.producer_name = "algm-export"
    check_model(proto)
    path = Path(path)
    with atomic_path(path) as tmp:
        onnx.save_model(proto, str(tmp))
    return path
