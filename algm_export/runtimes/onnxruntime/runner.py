"""Run an exported model in ONNX Runtime through polygraphy's `OnnxrtRunner`."""

from __future__ import annotations

import os
import tempfile

import numpy as np
import torch

from algm_export.core.errors import AlgmError, ArtifactError
from algm_export.runtimes.onnxruntime.loader import make_session
from algm_export.merging.driver import check_finite_array
from algm_export.runtimes.base import RunOutput, Runner


def _reason(e: BaseException) -> str:
    msg = " ".join(str(e).split())
    return f"{type(e).__name__}: {msg[:300]}"


def with_decision_outputs(path) -> tuple[bytes, list[tuple[int, str, str]]]:
    """The graph of `path` (its external data not loaded) with more outputs: for every `algm` node
    in graph order, the tokens entering it (`x`, and `size` for GBM) and the assignment map it
    outputs. Returns (serialised model, [(step, kind, output name)])."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    types = {v.name: v.type.tensor_type.elem_type for v in list(model.graph.value_info) + list(model.graph.output)}
    have = {o.name for o in model.graph.output}
    extra = []
    step = 0
    for node in model.graph.node:
        if node.domain != "algm" or node.op_type not in ("AlgmClap", "AlgmGbm"):
            continue
        wanted = [("x", node.input[0], onnx.TensorProto.FLOAT), ("assign", node.output[2], onnx.TensorProto.INT32)]
        if node.op_type == "AlgmGbm":
            wanted.insert(1, ("size", node.input[1], onnx.TensorProto.FLOAT))
        for kind, name, default in wanted:
            if name not in have:
                model.graph.output.append(onnx.helper.make_tensor_value_info(name, types.get(name) or default, None))
                have.add(name)
            extra.append((step, kind, name))
        step += 1
    return model.SerializeToString(), extra


class OrtRunner(Runner):
    """`infer(image [B,3,H,W] torch or numpy float32) -> RunOutput` (see `runtimes.base`).

    decisions: the session also outputs, for every merge step, the tokens entering it and its
    assignment map (`RunOutput.merge_inputs`, `assignments`): the backend's own merge decisions,
    compared with PyTorch's by `validate` (`merging.margins`). The logits are those of the file
    (extra outputs change no computation). The file's external data must have been checked
    (`artifacts`): the session reads it from the file's folder."""

    backend = "onnxruntime"

    def __init__(self, path, threads=None, providers=None, name=None, decisions: bool = False):
        from polygraphy.backend.onnxrt import OnnxrtRunner

        self.path = str(path)
        self._extra: list = []
        try:
            if decisions:
                blob, self._extra = with_decision_outputs(path)
                # ONNX Runtime reads (maps) external data only for a graph opened from a file, relative
                # to it and never through a symlink leading out: the graph with the extra outputs
                # goes beside the original for as long as the session takes to open
                fd, tmp = tempfile.mkstemp(prefix=".decisions.", suffix=".onnx",
                                           dir=os.path.dirname(os.path.abspath(self.path)))
                try:
                    with os.fdopen(fd, "wb") as f:
                        f.write(blob)
                    del blob
                    self.session = make_session(tmp, threads=threads, providers=providers)
                finally:
                    os.unlink(tmp)
            else:
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
        #: a graph exported for a fixed batch (`export --batch 1`) takes that many images per run
        self.max_batch = shape[0] if shape and isinstance(shape[0], int) else None

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
        res = RunOutput(np.asarray(out["logits"], dtype=np.float32), None if ms is None else np.asarray(ms))
        if self._extra:
            steps = 1 + max(s for s, _, _ in self._extra)
            res.merge_inputs = [{"x": None, "size": None} for _ in range(steps)]
            res.assignments = [None] * steps
            for step, kind, name in self._extra:
                v = np.asarray(out[name])
                if kind == "assign":
                    res.assignments[step] = v.astype(np.int64)
                else:
                    res.merge_inputs[step][kind] = v.astype(np.float32)
        return res

    def close(self):
        if getattr(self, "runner", None) is not None and self.runner.is_active:
            self.runner.deactivate()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
