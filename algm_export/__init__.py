"""algm-export: Segmenter + ALGM token merging -> ONNX -> TensorRT, with parity evidence.

    from algm_export import create_segmenter, load_segmenter, AlgmSetting, apply_algm

The names are imported lazily, so that `import algm_export` (and CLI start-up, and the engine
build worker) does not pay for torch and timm until a model is needed.
"""

__version__ = "0.1.0"

_LAZY = {
    "AlgmError": ("algm_export.core.errors", "AlgmError"),
    "AlgmSetting": ("algm_export.core.setting", "AlgmSetting"),
    "apply_algm": ("algm_export.merging.driver", "apply_algm"),
    "create_segmenter": ("algm_export.models.families.segmenter", "create_segmenter"),
    "load_segmenter": ("algm_export.models.formats.published_segmenter", "load_segmenter"),
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        mod, attr = _LAZY[name]
        value = getattr(importlib.import_module(mod), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'algm_export' has no attribute {name!r}")
