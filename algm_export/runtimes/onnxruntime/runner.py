"""Run an exported model in ONNX Runtime through polygraphy's `OnnxrtRunner`."""

from __future__ import annotations

import numpy as np
import torch

from algm_export.runtimes.onnxruntime.loader import make_session
from algm_export.merging.patch import check_finite_array


class OrtRunner:
    """`infer(image [B,3,H,W] torch or numpy float32) -> {"logits": np, "merge_stats": np?}`."""

    backend = "ort"

    def __init__(self, path, threads=None, providers=None, name=None):
        from polygraphy.backend.onnxrt import OnnxrtRunner

        self.path = str(path)
        self.session = make_session(path, threads=threads, providers=providers)
        self.runner = OnnxrtRunner(self.session, name=name or f"onnxrt:{self.path}")
        self.runner.activate()
        self.output_names = [o.name for o in self.session.get_outputs()]

    @property
    def name(self):
        return self.runner.name

    def infer(self, image) -> dict:
        if isinstance(image, torch.Tensor):
            image = image.detach().cpu().float().numpy()
        check_finite_array(image)
        out = self.runner.infer({"image": np.ascontiguousarray(image, dtype=np.float32)})
        return {k: np.asarray(v) for k, v in out.items()}

    def close(self):
        if self.runner.is_active:
            self.runner.deactivate()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
