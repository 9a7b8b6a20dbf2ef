"""float16 export for strongly typed engines (TensorRT-RTX, TensorRT 11).

Precision of each part of the fp16 graph:

| part | precision |
|---|---|
| input `image`, output `logits`, `merge_stats` | float32 / int32 (the interface does not change) |
| patch embedding, attention and MLP matmuls, residual stream | float16 |
| attention softmax | float32 (scores cast up, probabilities cast back) |
| every LayerNorm (encoder, decoder, mask_norm) | float32 |
| CLAP / GBM similarity, thresholds, ranks, merge averages | float32 inside the ops (docs/algorithm.md: the static form) |
| padding key bias | lowest float16 (-65504) |
| unmerge, bilinear upsampling of the logits | float32 |
"""

from __future__ import annotations

import copy
import os

import torch.nn as nn
import torch.nn.functional as F

from algm_export.merging.driver import AlgmModel


class Fp32LayerNorm(nn.LayerNorm):
    """LayerNorm that computes in float32 and returns the input dtype (weights stay float32)."""

    def forward(self, x):
        return F.layer_norm(x.float(), self.normalized_shape, self.weight, self.bias, self.eps).to(x.dtype)


def to_fp16(model):
    """A float16 copy of a Segmenter or AlgmModel, with the fp32 islands listed above."""
    if isinstance(model, AlgmModel):
        model.reset_state()
    m = copy.deepcopy(model).half()
    for mod in m.modules():
        if type(mod) is nn.LayerNorm:
            mod.__class__ = Fp32LayerNorm
            mod.float()
    return m


def export_fp16(model, path: str | os.PathLike, **kwargs):
    """`export_onnx` of the float16 copy (kwargs: e.g. threshold_input for a dynamic model)."""
    from algm_export.export.exporter import export_onnx

    return export_onnx(to_fp16(model), path, **kwargs)
