"""algm-export: Segmenter + ALGM token merging -> ONNX -> TensorRT, with parity evidence."""

__version__ = "0.1.0"

from algm_export.errors import AlgmError  # noqa: E402

__all__ = ["AlgmError", "__version__"]
