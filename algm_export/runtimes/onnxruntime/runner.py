"""Run an exported model in ONNX Runtime through polygraphy's `OnnxrtRunner`."""

from __future__ import annotations

import numpy as np
import torch

from algm_export.core.errors import AlgmError, ArtifactError
from algm_export.runtimes.onnxruntime.loader import make_session
from algm_export.merging.driver import check_finite_array
from algm_export.runtimes.base import RunOutput, Runner


def _reason(e: BaseException) -> str:
    msg = " ".join(str(e).split())
    return f"{type(e).__name__}: {msg[:300]}"


class OrtRunner(Runner):
    """`infer(image [B,3,H,W] torch or numpy float32) -> RunOutput` (see `runtimes.base`)."""

    backend = "onnxruntime"

    def __init__(self, path, threads=None, providers=None, name=None):
        from polygraphy.backend.onnxrt import OnnxrtRunner

        self.path = str(path)
        try:
            self.session = make_session(path, threads=threads, providers=providers)
            self.runner = OnnxrtRunner(self.session, name=name or f"onnxrt:{self.path}")
            self.runner.activate()
            self.output_names = [o.name for o in self.session.get_outputs()]
            inputs = self.session.get_inputs()
        except AlgmError:
            raise
        except Exception as e:  # noqa: BLE001  (the file is what is wrong: ORT's parser refused it)
            raise ArtifactError(f"ONNX Runtime cannot load {self.path} ({_reason(e)}); the file is corrupt or not "
                                "an algm-export ONNX: re-export it") from None
        if [i.name for i in inputs] not in (["image"], ["image", "threshold"]) or "logits" not in self.output_names:
            raise ArtifactError(f"{self.path} has inputs {[i.name for i in inputs]} and outputs {self.output_names}, "
                                "not the input `image` and output `logits` of an algm-export ONNX; re-export it")
        shape = inputs[0].shape
        #: (H, W) of the images the graph takes, None where a dimension is symbolic
        self.input_size = tuple(d if isinstance(d, int) else None for d in shape[2:4]) if len(shape) == 4 else None
        self.input_names = [i.name for i in inputs]

    @property
    def name(self):
        return self.runner.name

    @property
    def takes_threshold(self) -> bool:
        return "threshold" in self.input_names

    def built_in_threshold(self):
        """The CLAP threshold the graph's `algm::AlgmClap` node carries (static and fixed-threshold
        dynamic files), None for a baseline graph or one that takes the threshold as an input.
        Read from the file's nodes (the weights are not loaded)."""
        if self.takes_threshold:
            return None
        if not hasattr(self, "_built_in_threshold"):
            import onnx

            found = None
            graph = onnx.load(self.path, load_external_data=False).graph
            for node in graph.node:
                if node.domain == "algm" and node.op_type == "AlgmClap":
                    for a in node.attribute:
                        if a.name == "threshold":
                            found = float(onnx.helper.get_attribute_value(a))
                    break
            self._built_in_threshold = found
        return self._built_in_threshold

    def _infer(self, image, threshold=None) -> RunOutput:
        from algm_export.core.errors import InputError

        if isinstance(image, torch.Tensor):
            image = image.detach().cpu().float().numpy()
        check_finite_array(image)
        feeds = {"image": np.ascontiguousarray(image, dtype=np.float32)}
        if self.takes_threshold:
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
        try:
            out = self.runner.infer(feeds)
        except AlgmError:
            raise
        except Exception as e:  # noqa: BLE001
            raise ArtifactError(f"ONNX Runtime failed to run {self.path} on a {list(image.shape)} image batch "
                                f"({_reason(e)}); the file does not match its manifest's model: re-export it") from None
        ms = out.get("merge_stats")
        return RunOutput(np.asarray(out["logits"], dtype=np.float32), None if ms is None else np.asarray(ms))

    def close(self):
        if getattr(self, "runner", None) is not None and self.runner.is_active:
            self.runner.deactivate()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
