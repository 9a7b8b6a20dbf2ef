"""Run an exported model in ONNX Runtime through polygraphy's `OnnxrtRunner`."""

from __future__ import annotations

import numpy as np
import torch

from algm_export.runtimes.onnxruntime.loader import make_session
from algm_export.merging.patch import check_finite_array


class OrtRunner:
    """`infer(image [B,3,H,W] torch or numpy float32) -> {"logits": np, "merge_stats": np?}`.

    A threshold-input export (dynamic token mode) also takes `threshold`: a float for the whole
    batch or one per image ([B]); it is required there and refused elsewhere."""

    backend = "ort"

    def __init__(self, path, threads=None, providers=None, name=None):
        from polygraphy.backend.onnxrt import OnnxrtRunner

        self.path = str(path)
        self.session = make_session(path, threads=threads, providers=providers)
        self.runner = OnnxrtRunner(self.session, name=name or f"onnxrt:{self.path}")
        self.runner.activate()
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.input_names = [i.name for i in self.session.get_inputs()]

    @property
    def threshold_input(self) -> bool:
        return "threshold" in self.input_names

    @property
    def name(self):
        return self.runner.name

    def infer(self, image, threshold=None) -> dict:
        from algm_export.errors import ConfigError, InputError

        if isinstance(image, torch.Tensor):
            image = image.detach().cpu().float().numpy()
        check_finite_array(image)
        feeds = {"image": np.ascontiguousarray(image, dtype=np.float32)}
        if self.threshold_input:
            if threshold is None:
                raise InputError(f"{self.path} takes the CLAP threshold as an input: pass threshold=<float> "
                                 "or one per image")
            t = np.asarray(threshold.detach().cpu() if isinstance(threshold, torch.Tensor) else threshold,
                           dtype=np.float32).reshape(-1)
            if t.size == 1:
                t = np.full(image.shape[0], t[0], np.float32)
            if t.size != image.shape[0] or not np.isfinite(t).all() or (np.abs(t) > 1).any():
                raise InputError(f"threshold {t.tolist()}: give one value, or one per image ({image.shape[0]}), "
                                 "finite and within [-1, 1]")
            feeds["threshold"] = t
        elif threshold is not None:
            raise ConfigError(f"{self.path} has its threshold built in; export with threshold_input=True to "
                              "choose it at run time")
        out = self.runner.infer(feeds)
        return {k: np.asarray(v) for k, v in out.items()}

    def close(self):
        if self.runner.is_active:
            self.runner.deactivate()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
