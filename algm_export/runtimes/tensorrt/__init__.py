"""TensorRT and TensorRT-RTX backend (Polygraphy-style: loader / builder / runner / worker).

Nothing here imports tensorrt at import time. See `loader` for the backend selection and the
TensorRT-RTX library quirk, `builder` + `worker` for engine building (in a child process,
driven by `algm_export.tasks.build.build_engines`) and `runner` for running engines on a GPU.
"""

from algm_export.runtimes.tensorrt.loader import (BACKENDS, describe_environment, resolve_backend,
                                                  rtx_env)

__all__ = ["BACKENDS", "describe_environment", "resolve_backend", "rtx_env", "TrtRunner"]


def __getattr__(name):
    if name == "TrtRunner":
        from algm_export.runtimes.tensorrt.runner import TrtRunner

        return TrtRunner
    raise AttributeError(name)
