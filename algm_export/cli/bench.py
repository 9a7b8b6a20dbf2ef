"""`algm-export bench`: latency and throughput side by side per setting and backend."""

from __future__ import annotations

import argparse

from algm_export.cli import args as a
from algm_export.core.names import ANSWERS


def add_parser(sub):
    p = a.command_parser(sub, "bench", help="latency/throughput side by side per setting and backend",
                         description="Benchmark the baseline and every setting on every backend present, interleaved "
                                     "in one run; prints the table and writes DIR/bench/bench.json and bench.png. "
                                     "Dynamic token mode entries run the bench images in turn and are counted at "
                                     "their real token counts (FLOP ratio = baseline MACs / mean per-image MACs).",
                         example="algm-export bench out/vit_s --backend torch,onnxruntime --batch 1,4 --repeats 10\n"
                                 "algm-export bench out/vit_s --backend triton --concurrency 1,8 --repeats 5")
    a.export_dir_arg(p)
    p.add_argument("--backend", type=a.served_backends_type, default=None, metavar="NAME[,NAME...]",
                   help="comma-separated: " + a.backend_help("all present here")
                        + "; triton: the folder served by Triton (as `algm-export serve`), measured from concurrent "
                          "clients (--concurrency; needs the serve extra)")
    p.add_argument("--backends", dest="backend", type=a.served_backends_type, help=argparse.SUPPRESS)  # deprecated
    p.add_argument("--concurrency", default="1,8",
                   help="triton: comma-separated numbers of concurrent clients, one image per request "
                        "(default: %(default)s; the server batches up to the largest)")
    p.add_argument("--requests", type=int, default=4,
                   help="triton: requests per client in each timed block (default: %(default)s)")
    p.add_argument("--triton-backend", type=a.backend_type, default="onnxruntime",
                   help="triton: what the served models run on (onnxruntime, tensorrt, tensorrt-rtx; "
                        "default: %(default)s)")
    p.add_argument("--answer", choices=ANSWERS, default="logits",
                   help="triton: what each request asks the served models for, besides merge_stats: logits "
                        "(FP32 [n_cls, H, W], default) or labels (each pixel's class, [H, W]: what a client that "
                        "wants the segmentation asks for; the server then does not send the logits)")
    a.precision_arg(p, help="fp32 or fp16 (fp16 runs the float16 ONNX / engines; torch runs fp32 only); "
                            "default: %(default)s")
    p.add_argument("--batch", default="1", help="comma-separated batch sizes (default: 1)")
    a.images_arg(p)
    a.thresholds_arg(p)
    p.add_argument("--repeats", type=int, default=10, help="interleaved repeats (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch and ONNX Runtime (default: all)")
    p.add_argument("--settle-ms", type=float, default=50.0,
                   help="idle time before each timed run, so that the threads of the model that just ran stop "
                        "spinning on the cores (default: %(default)s; 0 runs back to back)")
    p.add_argument("--no-grouping", dest="group", action="store_false",
                   help="at batch > 1, batch dynamic entries' images in image order instead of by similar token "
                        "counts (a dynamic graph computes every image of a batch at the batch's largest count)")
    a.trust_arg(p)
    a.wait_arg(p)
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    from algm_export.tasks.bench import bench, format_bench
    rep = bench(args.dir, backends=args.backend, batches=[int(b) for b in args.batch.split(",")],
                images=args.images, precision=args.precision, repeats=args.repeats, warmup=args.warmup, threads=args.threads,
                settle_s=args.settle_ms / 1e3, trust_checkpoint=args.trust_checkpoint, wait=args.wait,
                thresholds=args.threshold, concurrency=_ints(args.concurrency, "--concurrency"),
                requests=args.requests, triton_backend=args.triton_backend, group=args.group,
                answer=args.answer)
    print(format_bench(rep))
    print(f"\nwritten: {args.dir}/bench/bench.json, {args.dir}/bench/bench.png")
    return 0


def _ints(text: str, option: str) -> list:
    from algm_export.core.errors import ConfigError

    try:
        vals = [int(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        vals = []
    if not vals or min(vals) < 1:
        raise ConfigError(f"{option} {text!r}: give comma-separated whole numbers >= 1, e.g. 1,8")
    return vals
