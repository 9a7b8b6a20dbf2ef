"""A model served by Triton through the `Runner` interface: the request goes over HTTP or gRPC.

    with TritonRunner("127.0.0.1:8001", "t0.880_l1-5", protocol="grpc") as r:
        out = r.infer(images)          # RunOutput: logits, merge_stats (tokens from them, see base)
    TritonRunner(url, model, outputs=["labels", "merge_stats"])   # the classes only: no logits sent

One client per runner; tritonclient's clients are not shared between threads, so a caller with
several threads makes one runner per thread (`bench --backend triton` does).
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from algm_export.core.errors import BackendUnavailable, InputError
from algm_export.runtimes.base import RunOutput, Runner

PROTOCOLS = ("grpc", "http")


def _client_module(protocol: str):
    if protocol not in PROTOCOLS:
        raise InputError(f"protocol {protocol!r}: use grpc or http")
    try:
        if protocol == "grpc":
            import tritonclient.grpc as mod
        else:
            import tritonclient.http as mod
    except ImportError as e:
        raise BackendUnavailable(f"talking to Triton needs tritonclient ({e.name} is missing): "
                                 "pip install 'algm-export[serve]'") from None
    return mod


def strip_scheme(url: str) -> str:
    """`grpc://host:port` / `http://host:port` / `host:port` -> `host:port` (tritonclient's form)."""
    for scheme in ("grpc://", "http://", "https://"):
        if url.startswith(scheme):
            return url[len(scheme):]
    return url


class TritonRunner(Runner):
    """`infer(image [B,3,H,W] float32, threshold=None) -> RunOutput` from a model of a Triton server."""

    backend = "triton"

    def __init__(self, url: str, model: str, protocol: str = "grpc", takes_threshold: bool = False,
                 outputs: Optional[list] = None, timeout_s: float = 120.0, name: Optional[str] = None):
        self.mod = _client_module(protocol)
        self.protocol, self.model, self.url = protocol, model, strip_scheme(url)
        self.name = name or f"triton:{model}"
        self._takes_threshold = takes_threshold
        self.outputs = outputs or ["logits", "merge_stats"]
        self.timeout_s = timeout_s
        self.client = self.mod.InferenceServerClient(self.url)

    @property
    def takes_threshold(self) -> bool:
        return self._takes_threshold

    def _infer(self, image, threshold=None) -> RunOutput:
        import torch

        if isinstance(image, torch.Tensor):
            image = image.detach().cpu().float().numpy()
        x = np.ascontiguousarray(image, dtype=np.float32)
        inputs = [self.mod.InferInput("image", list(x.shape), "FP32")]
        inputs[0].set_data_from_numpy(x)
        if self.takes_threshold and threshold is not None:
            t = np.asarray(threshold, np.float32).reshape(-1)
            t = np.full(x.shape[0], t[0], np.float32) if t.size == 1 else t
            inputs.append(self.mod.InferInput("threshold", [x.shape[0], 1], "FP32"))
            inputs[1].set_data_from_numpy(t.reshape(-1, 1))
        outs = [self.mod.InferRequestedOutput(n) for n in self.outputs]
        kw = {"client_timeout": self.timeout_s} if self.protocol == "grpc" else {}
        res = self.client.infer(self.model, inputs, outputs=outs, **kw)
        got = {n: res.as_numpy(n) for n in self.outputs}
        return RunOutput(None if got.get("logits") is None else np.asarray(got["logits"], np.float32),
                         None if got.get("merge_stats") is None else np.asarray(got["merge_stats"]),
                         labels=got.get("labels"))

    def close(self) -> None:
        c, self.client = getattr(self, "client", None), None
        if c is not None:
            try:
                c.close()
            except Exception:  # noqa: BLE001
                pass
