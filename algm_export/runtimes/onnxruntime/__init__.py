from algm_export.runtimes.onnxruntime.loader import make_session  # noqa: F401
from algm_export.runtimes.onnxruntime.runner import OrtRunner  # noqa: F401
