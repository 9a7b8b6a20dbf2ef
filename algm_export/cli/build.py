"""`algm-export build`: TensorRT / TensorRT-RTX engines for every entry of an export folder."""

from __future__ import annotations

from algm_export.cli import args as a


def add_parser(sub):
    p = a.command_parser(sub, "build", help="build TensorRT / TensorRT-RTX engines per setting",
                         description="Build the baseline engine and one engine per threshold setting of an export "
                                     "folder, with an optimization profile over the batch, and record them in the "
                                     "manifest. TensorRT-RTX builds ahead of time with no GPU.",
                         example="algm-export build out/vit_s --backend tensorrt-rtx --precision fp16 --batch 1,4,8")
    a.export_dir_arg(p)
    p.add_argument("--backend", type=a.backend_type, default=None,
                   help="tensorrt (alias trt) or tensorrt-rtx; default: tensorrt when importable, else tensorrt-rtx")
    p.add_argument("--plugins", default=None, metavar="LIB", help="algm plugin library (libalgm_plugins.so)")
    a.precision_arg(p)
    p.add_argument("--batch", default=None, help="MIN,OPT,MAX batch of the profile (default: 1,1,8; a folder exported "
                                                 "with --batch 1: 1,1,1)")
    p.add_argument("--compute-capability", nargs="+", default=None, metavar="SM",
                   help="TensorRT-RTX targets, e.g. 86 89 (default: 86)")
    p.add_argument("--workspace", type=int, default=None, metavar="MB", help="builder workspace limit")
    a.wait_arg(p)
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    from algm_export.tasks.build import build_engines
    from algm_export.core.errors import ConfigError
    from algm_export.core.tables import format_table

    if args.backend not in (None, "tensorrt", "tensorrt-rtx"):
        raise ConfigError(f"--backend {args.backend}: engines are built with tensorrt or tensorrt-rtx "
                          "(an export folder's ONNX files run on onnxruntime as they are)")
    batch = None
    if args.batch is not None:
        try:
            batch = [int(v) for v in args.batch.split(",")]
        except ValueError:
            raise ConfigError(f"--batch {args.batch!r}: give MIN,OPT,MAX, e.g. 1,4,8") from None
        if len(batch) == 1:
            batch = batch * 3
    ccs = None
    if args.compute_capability:
        try:
            ccs = [int(v) for x in args.compute_capability for v in str(x).replace(".", "").split(",") if v]
        except ValueError:
            raise ConfigError(f"--compute-capability {' '.join(args.compute_capability)}: give numbers such as "
                              "86 or 8.6") from None
    recs = build_engines(args.dir, backend=args.backend, plugins=args.plugins, precision=args.precision,
                         batch=batch, compute_capabilities=ccs, workspace_mb=args.workspace, wait=args.wait)
    rows = [[r["setting"], r["backend"], r["precision"], ",".join(map(str, r.get("compute_capabilities") or [])) or "-",
             f"{r['build_seconds']:.1f}", r["layers"].get("count", "-"), len(r["layers"].get("plugin_layers", [])),
             r["file"]] for r in recs]
    print(format_table(["setting", "backend", "precision", "SM", "build s", "layers", "plugin layers", "engine"], rows))
    return 0
