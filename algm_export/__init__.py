"""algm-export: Segmenter + ALGM token merging -> ONNX -> TensorRT, with parity evidence.

    from algm_export import create_segmenter, load_segmenter, AlgmSetting, apply_algm
"""

__version__ = "0.1.0"

from algm_export.errors import AlgmError  # noqa: E402
from algm_export.merging.setting import AlgmSetting  # noqa: E402
from algm_export.merging.patch import apply_algm  # noqa: E402
from algm_export.models.segmenter import create_segmenter  # noqa: E402


def load_segmenter(path, **kwargs):
    """Load a published-format checkpoint (`checkpoint.pth` + `variant.yml` beside it)."""
    from algm_export.models.checkpoint import load_segmenter as _load

    return _load(path, **kwargs)


__all__ = ["AlgmError", "AlgmSetting", "apply_algm", "create_segmenter", "load_segmenter", "__version__"]
