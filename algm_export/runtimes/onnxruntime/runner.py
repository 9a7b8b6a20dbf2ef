"""Run an exported model in ONNX Runtime through polygraphy's `OnnxrtRunner`."""

from __future__ import annotations

import numpy as np
import torch

from algm_export.runtimes.onnxruntime.loader import make_session
from algm_export.merging.patch import check_finite_array


class OrtRunner:
    """`infer(image [B,3,H,W] torch or numpy float32) -> {"logits": np, "merge_stats": np?}`."""

    backend = "ort"

    def __init__(self, path, threads=None, providers=None, name=None, spinning: bool = True):
        from polygraphy.backend.onnxrt import OnnxrtRunner

        self.path = str(path)
        self.session = make_session(path, threads=threads, providers=providers, spinning=spinning)
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

    def timed(self, image):
        """A zero-argument callable that runs inference on `image` for timing: the input is staged once
        and the outputs are written into preallocated buffers (ONNX Runtime IOBinding), as a deployment
        with its own buffers runs. `infer()` instead returns fresh numpy arrays, and allocating and
        filling ~B*n_cls*H*W floats of logits costs tens of milliseconds per call on a CPU, the same for
        every model. The callable's `.outputs` holds the output arrays (name -> array), filled in place.
        """
        import onnxruntime as ort

        if isinstance(image, torch.Tensor):
            image = image.detach().cpu().float().numpy()
        x = np.ascontiguousarray(image, dtype=np.float32)
        check_finite_array(x)
        first = self.session.run(None, {"image": x})
        binding = self.session.io_binding()
        xv = ort.OrtValue.ortvalue_from_numpy(x)
        binding.bind_ortvalue_input("image", xv)
        outputs = {name: np.empty_like(a) for name, a in zip(self.output_names, first)}
        values = [ort.OrtValue.ortvalue_from_numpy(a) for a in outputs.values()]  # share the arrays' memory
        for name, v in zip(outputs, values):
            binding.bind_ortvalue_output(name, v)
        session = self.session

        def run():
            session.run_with_iobinding(binding)

        run.outputs = outputs
        run._keep = (x, xv, values, binding)
        return run

    def close(self):
        if self.runner.is_active:
            self.runner.deactivate()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
