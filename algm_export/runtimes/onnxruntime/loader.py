"""ONNX Runtime sessions for exported models (CPU by default; CUDA when onnxruntime-gpu is present)."""

from __future__ import annotations

import os
from typing import Optional, Sequence

from algm_export.core.errors import BackendUnavailable


def make_session(path: str | os.PathLike, threads: Optional[int] = None, providers: Optional[Sequence[str]] = None,
                 optimize: bool = True):
    try:
        import onnxruntime as ort
    except ImportError as e:  # pragma: no cover - it is a main dependency
        raise BackendUnavailable("onnxruntime is not installed: pip install onnxruntime (or onnxruntime-gpu)") from e
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = int(threads)
        so.inter_op_num_threads = 1
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    avail = ort.get_available_providers()
    if providers is None:
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in avail]
    return ort.InferenceSession(str(path), sess_options=so, providers=list(providers))
