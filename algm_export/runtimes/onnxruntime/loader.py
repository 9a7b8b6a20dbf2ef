"""ONNX Runtime sessions for exported models (CPU by default; CUDA when onnxruntime-gpu is present)."""

from __future__ import annotations

import os
from typing import Optional, Sequence

from algm_export.core.errors import BackendUnavailable


def make_session(path: str | os.PathLike | bytes, threads: Optional[int] = None,
                 providers: Optional[Sequence[str]] = None, optimize: bool = True,
                 external_data_folder: Optional[str | os.PathLike] = None):
    """An InferenceSession of an ONNX file (or of serialised model bytes: `external_data_folder` is
    then the folder its external-data locations are relative to, checked by the caller)."""
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
    if external_data_folder is not None:
        so.add_session_config_entry("session.model_external_initializers_file_folder_path", str(external_data_folder))
    model = path if isinstance(path, bytes) else str(path)
    return ort.InferenceSession(model, sess_options=so, providers=list(providers))
