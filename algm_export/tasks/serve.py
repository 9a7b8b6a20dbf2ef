"""`algm-export serve DIR`: every entry of an export folder as a model of one Triton Inference
Server (through PyTriton), until SIGTERM or Ctrl-C.

    serve("out/vit_s", ServeOptions(backend="onnxruntime", http_port=8000))

The models, their inputs and outputs, batching and the backends: `runtimes/triton/server.py`.
This module prints the name mapping, the progress per model and the ready line (endpoints and a
`curl` example), and stops the server cleanly on SIGTERM / SIGINT.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

from algm_export.core.progress import status


@dataclass
class ServeOptions:
    backend: str = "onnxruntime"
    precision: str = "fp32"
    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    max_batch: int = 8
    max_queue_delay_us: int = 500
    instances: int = 1
    threads: Optional[int] = None
    only: Optional[Sequence[str]] = None
    wait: bool = False
    verbose: bool = False


def curl_example(server) -> str:
    """A shell line that asks the first model for one image (all zeros) over HTTP."""
    m = server.models[0]
    shape = [1] + list(m.inputs[0].shape)
    n = 1
    for d in shape:
        n *= d
    extra = (', {"name": "threshold", "shape": [1, 1], "datatype": "FP32", "data": [%g]}' % m.default_threshold
             if m.takes_threshold else "")
    body = ('import json; print(json.dumps({"inputs": [{"name": "image", "shape": %s, "datatype": "FP32", '
            '"data": [0.0] * %d}%s]}))' % (shape, n, extra))
    return (f"python3 -c '{body}' | curl -s -X POST {server.urls['http']}/v2/models/{m.name}/infer "
            "-H 'Content-Type: application/json' -d @- | head -c 300")


def describe(server) -> list[str]:
    """The ready lines: endpoints, models with their inputs and outputs, examples."""
    u = server.urls
    lines = [f"serving {len(server.models)} model(s) from {server.export_dir} on {server.backend} "
             f"(dynamic batching up to {server.max_batch}, {server.max_queue_delay_us} us queue delay, "
             f"{server.instances} instance(s) per model)",
             f"  HTTP     {u['http']}   (health: {u['http']}/v2/health/ready)",
             f"  gRPC     {u['grpc'][len('grpc://'):]}",
             f"  metrics  {u['metrics']}",
             "  models (Triton model (entry of the folder): inputs -> outputs, without the batch dimension):"]
    for m in server.models:
        ins = ", ".join(f"{t.name} {t.triton_type} {list(t.shape)}" + (" (optional)" if t.optional else "")
                        for t in m.inputs)
        outs = ", ".join(f"{t.name} {t.triton_type} {list(t.shape)}" for t in m.outputs)
        lines.append(f"    {m.name} (entry {m.entry}): {ins} -> {outs}")
    norm = getattr(server, "normalization", "vit")
    if isinstance(norm, dict):
        norm_text = f"mean {list(norm['mean'])}, std {list(norm['std'])}"
        norm_opt = f"--mean {','.join(map(str, norm['mean']))} --std {','.join(map(str, norm['std']))}"
    else:
        norm_text, norm_opt = str(norm), f"--normalization {norm}"
    lines += [f"  images: RGB / 255, resized to the input size, then (x - mean) / std of the {norm_text} "
              "normalisation", "  try:", f"    curl -s {u['http']}/v2/health/ready -o /dev/null -w '%{{http_code}}\\n'",
              f"    {curl_example(server)}",
              f"    python examples/triton_client.py photo.jpg --url {u['http'][len('http://'):]} "
              f"--model {server.models[-1].name} {norm_opt}",
              "  stop with Ctrl-C or SIGTERM"]
    return lines


def serve(export_dir, options: ServeOptions = ServeOptions(), stop: Optional[threading.Event] = None,
          out: Callable[[str], None] = print, on_ready: Optional[Callable] = None) -> int:
    """Serve `export_dir` until `stop` is set (default: SIGTERM or SIGINT sets it); 0 after a clean stop."""
    from algm_export.runtimes.triton.server import FolderServer

    stop = stop or threading.Event()
    restore = _stop_on_signals(stop)
    t0 = time.perf_counter()
    try:
        server = FolderServer(export_dir, backend=options.backend, precision=options.precision,
                              max_batch=options.max_batch, max_queue_delay_us=options.max_queue_delay_us,
                              instances=options.instances, threads=options.threads, host=options.host,
                              http_port=options.http_port, grpc_port=options.grpc_port,
                              metrics_port=options.metrics_port, only=options.only, wait=options.wait,
                              verbose=options.verbose, on_progress=status)
        with server:
            for line in describe(server):
                out(line)
            out(f"ready in {time.perf_counter() - t0:.1f} s")
            sys.stdout.flush()
            if on_ready:
                on_ready(server)
            server.serve_until(stop)
            status("stopping Triton")
            t1 = time.perf_counter()
        out(f"stopped ({time.perf_counter() - t1:.1f} s)")
        return 0
    finally:
        restore()


def _stop_on_signals(stop: threading.Event) -> Callable[[], None]:
    """SIGTERM and SIGINT set `stop` (main thread only); returns the function that restores the old handlers."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    old = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}

    def handler(signum, frame):
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop waiting
        stop.set()

    for s in old:
        signal.signal(s, handler)

    def restore():
        for s, h in old.items():
            signal.signal(s, h)

    return restore
