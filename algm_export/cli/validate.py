"""`algm-export validate`: parity of a backend against PyTorch on every entry of an export folder."""

from __future__ import annotations

from algm_export.cli import args as a


def add_parser(sub):
    p = a.command_parser(sub, "validate", help="parity of ONNX Runtime / TensorRT against PyTorch",
                         description="Run every exported setting in a backend and in PyTorch (static with the same "
                                     "capacities, and dynamic with the exported policy; dynamic token mode entries "
                                     "against PyTorch's dynamic mode, with the token counts of every image, and "
                                     "threshold-input entries at each threshold); report logit differences, "
                                     "argmax agreement, parity mIoU, merge-decision flips and forced merges. Exits 3 "
                                     "below the limits.",
                         example="algm-export validate out/vit_s --backend onnxruntime --images photos/ "
                                 "--max-images 8")
    a.export_dir_arg(p)
    a.images_arg(p)
    p.add_argument("--backend", type=a.backend_type, default="onnxruntime", help=a.backend_help("onnxruntime"))
    a.precision_arg(p)
    a.thresholds_arg(p)
    p.add_argument("--labels", default=None, metavar="DIR",
                   help="ADE20K-layout folder (images/, annotations/): also report the real mIoU of both")
    p.add_argument("--max-images", type=int, default=None, help="use at most this many images")
    p.add_argument("--min-agreement", type=float, default=None, help="per-image argmax agreement limit in %%")
    p.add_argument("--mean-agreement", type=float, default=None, help="mean argmax agreement limit in %%")
    p.add_argument("--parity-miou", type=float, default=None, help="parity mIoU limit")
    a.trust_arg(p)
    a.wait_arg(p)
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    from algm_export.tasks.validate import Limits, format_report, validate

    lim = Limits.for_precision(args.precision)
    for k in ("min_agreement", "mean_agreement", "parity_miou"):
        if getattr(args, k) is not None:
            setattr(lim, k, getattr(args, k))
    rep = validate(args.dir, images=args.images, backend=args.backend, labels=args.labels, precision=args.precision,
                   limits=lim, limit_images=args.max_images, trust_checkpoint=args.trust_checkpoint,
                   wait=args.wait, thresholds=args.threshold)
    print(format_report(rep))
    print(f"\nreport: {args.dir}/validation/report.{rep['backend']}.{args.precision}.json "
          f"(outputs load with `polygraphy run --load-outputs`)")
    return 0 if rep["pass"] else 3
