"""`algm-export triton-repo`: a model repository for a production Triton Inference Server."""

from __future__ import annotations

from algm_export.cli import args as a


def add_parser(sub):
    p = a.command_parser(
        sub, "triton-repo", help="write a Triton model repository (config.pbtxt per entry) for tritonserver",
        description="Write a model repository for NVIDIA's tritonserver: one model per entry of the export folder "
                    "(ONNX as onnxruntime_onnx, or TensorRT engines as tensorrt_plan with cc_model_filenames per "
                    "compute capability), config.pbtxt with max_batch_size, dynamic_batching, instance_group and "
                    "the inputs and outputs read from the files, each checked against Triton's ModelConfig; the "
                    "plugin library when the engines use it, and a README with the server command.",
        example="algm-export triton-repo algm-demo --out triton-repo\n"
                "algm-export triton-repo out/vit_s --out repo --backend tensorrt --max-batch 8 --instances 2")
    a.export_dir_arg(p)
    p.add_argument("--out", required=True, metavar="REPO", help="the repository folder to write (new or empty)")
    p.add_argument("--backend", type=a.backend_type, default="onnxruntime",
                   help="onnxruntime: every entry's ONNX (default); tensorrt: every entry's TensorRT engine")
    a.precision_arg(p, help="fp32 or fp16: the ONNX files / engines to put in (default: %(default)s)")
    p.add_argument("--max-batch", type=int, default=None,
                   help="max_batch_size of every model (default: 8; a folder exported with --batch 1 is served "
                        "without batching and takes no other value)")
    p.add_argument("--max-queue-delay-us", type=int, default=500,
                   help="dynamic_batching max_queue_delay_microseconds (default: %(default)s)")
    p.add_argument("--instances", type=int, default=1, help="instance_group count per model (default: %(default)s)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "gpu"),
                   help="instance_group kind: auto (Triton's choice), cpu or gpu; engines always run on the GPU "
                        "(default: %(default)s)")
    p.add_argument("--setting", action="append", default=None, metavar="NAME",
                   help="only this entry (repeat for several; default: every entry)")
    p.add_argument("--force", action="store_true", help="replace an earlier repository written by triton-repo")
    a.wait_arg(p)
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    from algm_export.core.progress import status
    from algm_export.tasks.triton_repo import RepoOptions, write_repository

    opts = RepoOptions(backend=args.backend, precision=args.precision, max_batch=args.max_batch,
                       max_queue_delay_us=args.max_queue_delay_us, instances=args.instances, device=args.device,
                       only=args.setting, force=args.force, wait=args.wait)
    summary = write_repository(args.dir, args.out, opts, progress=status)
    for m in summary["models"]:
        print(f"  {m['name']:<24} {m['platform']:<18} entry {m['entry']}")
    extra = f"; plugin library {summary['plugins']['file']}" if summary["plugins"] else ""
    print(f"\n{len(summary['models'])} model(s) -> {args.out}/models{extra}; server command: {args.out}/README.md")
    return 0
