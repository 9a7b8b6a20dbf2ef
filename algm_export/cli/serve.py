"""`algm-export serve`: every entry of an export folder as a model of one Triton Inference Server."""

from __future__ import annotations

from algm_export.cli import args as a


def add_parser(sub):
    p = a.command_parser(
        sub, "serve", help="serve every entry of an export folder on NVIDIA Triton (HTTP, gRPC, metrics)",
        description="Serve the baseline and every setting of an export folder from one Triton Inference Server "
                    "(PyTriton), one model per entry, named after it (characters Triton refuses become _). Each "
                    "model takes `image` FP32 [3,H,W] (batched; a threshold-input entry also `threshold` FP32 [1]) "
                    "and answers `logits` and, for ALGM entries, `merge_stats`, with dynamic batching. Runs until "
                    "Ctrl-C or SIGTERM. Needs the serving extra: pip install 'algm-export[serve]'.",
        example="algm-export serve algm-demo\n"
                "algm-export serve out/vit_s --backend tensorrt --max-batch 16 --instances 2 --http-port 9000")
    a.export_dir_arg(p)
    p.add_argument("--backend", type=a.backend_type, default="onnxruntime",
                   help="what each model runs on: onnxruntime (the entry's ONNX), tensorrt or tensorrt-rtx (its "
                        "engine, with the plugin library it was built with); default: %(default)s")
    a.precision_arg(p, help="fp32 or fp16: the ONNX files / engines to serve (default: %(default)s)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: %(default)s; 0.0.0.0 listens on every interface)")
    p.add_argument("--http-port", type=int, default=8000, help="HTTP port (default: %(default)s; 0: a free one)")
    p.add_argument("--grpc-port", type=int, default=8001, help="gRPC port (default: %(default)s; 0: a free one)")
    p.add_argument("--metrics-port", type=int, default=8002,
                   help="Prometheus metrics port (default: %(default)s; 0: a free one)")
    p.add_argument("--max-batch", type=int, default=8,
                   help="largest batch the dynamic batcher forms (default: %(default)s)")
    p.add_argument("--max-queue-delay-us", type=int, default=500,
                   help="how long a request may wait for a batch to fill, in microseconds (default: %(default)s)")
    p.add_argument("--instances", type=int, default=1,
                   help="model instances per entry, each with its own runner (default: %(default)s)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads of each ONNX Runtime instance (default: all)")
    p.add_argument("--setting", action="append", default=None, metavar="NAME",
                   help="serve only this entry (repeat for several; default: every entry)")
    a.wait_arg(p)
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    from algm_export.tasks.serve import ServeOptions, serve

    opts = ServeOptions(backend=args.backend, precision=args.precision, host=args.host, http_port=args.http_port,
                        grpc_port=args.grpc_port, metrics_port=args.metrics_port, max_batch=args.max_batch,
                        max_queue_delay_us=args.max_queue_delay_us, instances=args.instances, threads=args.threads,
                        only=args.setting, wait=args.wait, verbose=bool(getattr(args, "debug", False)))
    return serve(args.dir, opts)
