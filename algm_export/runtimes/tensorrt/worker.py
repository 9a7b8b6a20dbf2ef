"""Child-process entry of the engine builder.

    python -m algm_export.runtimes.tensorrt.worker JOB.json RESULT.json

JOB.json::

    {"name": "t0.880", "onnx": "/x/t0.880.onnx", "engine": "/x/engines/.t0.880.fp32.engine.partial",
     "backend": "tensorrt-rtx", "precision": "fp32", "strongly_typed": true, "fp16_flag": false,
     "input": "image", "profile": [1, 1, 8], "compute_capabilities": [86], "workspace_mb": null,
     "plugin_library": null, "strip_functions": true, "log_level": "error"}

RESULT.json: ``{"ok": true, ...builder result...}`` or
``{"ok": false, "error_type": "EngineBuildError", "error": "message"}``. Exit status 0 / 2
(an AlgmError) / 3 (an unexpected exception; "traceback" is included). TensorRT's log goes
to stderr. The parent (``algm_export.tasks.build``) starts this with `loader.rtx_env()` so that the
TensorRT-RTX parser quirk cannot abort it, and reports a crash (signal) with the stderr tail.

Test hook: ``ALGM_EXPORT_WORKER_FAULT=kill-mid-write:<name>`` makes the worker write half of
the engine for job `name` and then SIGKILL itself (an interrupted build).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import traceback


def _write_engine(path: str, engine, name: str) -> None:
    data = memoryview(engine)
    fault = os.environ.get("ALGM_EXPORT_WORKER_FAULT", "")
    with open(path, "wb") as f:
        if fault == f"kill-mid-write:{name}":
            f.write(data[: len(data) // 2])
            f.flush()
            os.fsync(f.fileno())
            os.kill(os.getpid(), signal.SIGKILL)
        f.write(data)


def run(job: dict) -> dict:
    from algm_export.runtimes.tensorrt.builder import build_engine

    engine, result = build_engine(job)
    _write_engine(job["engine"], engine, job.get("name", ""))
    return result


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 64
    job_path, result_path = argv
    from algm_export.core.errors import AlgmError

    try:
        with open(job_path) as f:
            job = json.load(f)
        out, rc = {"ok": True, **run(job)}, 0
    except AlgmError as e:
        out, rc = {"ok": False, "error_type": type(e).__name__, "error": str(e)}, 2
    except Exception as e:  # noqa: BLE001 - reported to the parent, which raises a typed error
        out = {"ok": False, "error_type": "internal", "error": f"{type(e).__name__}: {e}",
               "traceback": traceback.format_exc()}
        rc = 3
    with open(result_path, "w") as f:
        json.dump(out, f)
    return rc


if __name__ == "__main__":
    sys.exit(main())
