"""`algm-export export`: the baseline and one ONNX per threshold setting, and DIR/manifest.json."""

from __future__ import annotations

import argparse

from algm_export.cli import args as a


def add_parser(sub):
    p = a.command_parser(sub, "export", help="export the baseline and one ONNX per threshold setting",
                         description="Calibrate capacities per threshold setting on representative images, export "
                                     "the baseline and one static-shape ALGM ONNX per setting (custom algm ops with "
                                     "standard-op function bodies), and write DIR/manifest.json.",
                         example="algm-export export builtin:vit_s16_512 --out out/vit_s --thresholds 0.86,0.88 "
                                 "--precision fp16")
    a.model_arg(p)
    p.add_argument("--out", required=True, metavar="DIR", help="export folder")
    p.add_argument("--thresholds", default=None, help="comma-separated CLAP thresholds, e.g. 0.86,0.88,0.90 "
                                                      "(default: the checkpoint's own threshold)")
    p.add_argument("--layers", default=None, help="ALGM layers, CLAP first then GBM, e.g. 1,5 (default: checkpoint's)")
    p.add_argument("--calib-images", default=None, metavar="DIR",
                   help="calibration images (default: the photos bundled with scikit-image)")
    p.add_argument("--quantile", type=float, default=1.0,
                   help="capacity = this quantile of the calibration token counts (default: 1.0 = the maximum)")
    p.add_argument("--capacities", default=None, help="fixed capacities C1,C2 instead of calibration (expert use)")
    p.add_argument("--image-size", type=int, nargs="+", default=None, metavar="PX",
                   help="run size H [W] (default: the checkpoint's; a multiple of patch x window)")
    p.add_argument("--inline", action="store_true", help="also write the plain standard-op graph (functions inlined)")
    a.precision_arg(p, help="fp16: also write float16 graphs, for strongly typed engines (the fp32 graphs are always "
                            "written); default: %(default)s")
    p.add_argument("--fp16", dest="precision", action="store_const", const="fp16", help=argparse.SUPPRESS)
    p.add_argument("--token-mode", default="static", choices=["static", "dynamic"],
                   help="static: calibrated capacities per setting (fixed shapes; default); dynamic: as many token "
                        "slots as the batch needs, computed at run time (no calibration, never a forced merge)")
    p.add_argument("--threshold-input", action="store_true",
                   help="with --token-mode dynamic: one ONNX whose graph takes the CLAP threshold as an input "
                        "(`threshold`, float32 [B]) and serves every threshold")
    p.add_argument("--dynamic-thresholds", default=None, metavar="T[,T...]",
                   help="static mode: also export these thresholds in the dynamic token mode, into the same folder "
                        "(entries <setting>_dyn), to compare both modes side by side (validate, bench, report)")
    p.add_argument("--external-data", action="store_true",
                   help="store the weights as ONNX external data, once for the whole folder (DIR/weights.bin, shared "
                        "by every entry); automatic when the weights pass 1.75 GiB (protobuf's 2 GiB limit)")
    p.add_argument("--batch", type=int, default=None, metavar="1",
                   help="1: graphs for one image per run (fixed batch axis): dynamic token mode drops its padding "
                        "mask and EoMT's head becomes a convolution, for the fastest single-image latency; runners "
                        "split larger batches. Default: a dynamic batch axis")
    p.add_argument("--force", action="store_true", help="re-export into a non-empty folder")
    a.trust_arg(p)
    a.wait_arg(p)
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    from algm_export.merging.calibrate import parse_capacities
    from algm_export.export.pipeline import export_folder
    from algm_export.core.setting import parse_layers, parse_thresholds
    from algm_export.models.registry import resolve_model
    from algm_export.core.tables import format_table
    from algm_export.core.progress import stage

    size = None if not args.image_size else (tuple(args.image_size) * 2)[:2]
    spec, config = a.model_and_config(args)
    with stage(f"loading {spec}"):
        model = resolve_model(spec, config=config, image_size=size, trust_checkpoint=args.trust_checkpoint)
    man = export_folder(model, str(spec), args.out,
                        thresholds=None if args.thresholds is None else parse_thresholds(args.thresholds),
                        calib_images=args.calib_images, quantile=args.quantile, inline=args.inline, force=args.force,
                        layers=parse_layers(args.layers), fp16=args.precision == "fp16",
                        capacities=None if args.capacities is None else parse_capacities(args.capacities),
                        wait=args.wait, token_mode=args.token_mode, threshold_input=args.threshold_input,
                        dynamic_thresholds=None if args.dynamic_thresholds is None
                        else parse_thresholds(args.dynamic_thresholds),
                        external_data=True if args.external_data else None, batch=args.batch)
    rows = [["baseline", "-", "-", "-", man["baseline"]["onnx"], "yes" if man["baseline"]["tensorrt_ready"] else "NO"]]
    for s in man["settings"]:
        cal = s.get("calibration") or {}
        mx = "-" if not cal.get("counts") else "/".join(str(max(c)) for c in cal["counts"])
        caps = "dynamic" if s.get("capacities") is None else ",".join(map(str, s["capacities"]))
        tau = (f"{min(s['thresholds']):.3f}-{max(s['thresholds']):.3f}" if s.get("threshold_input")
               else f"{s['threshold']:.3f}")
        rows.append([s["name"], tau, caps, mx, s["onnx"],
                     "yes" if s["tensorrt_ready"] else "NO: " + "; ".join(s["tensorrt_problems"][:2])])
    print(format_table(["setting", "tau", "capacities", "max counts", "onnx", "TensorRT-ready"], rows))
    for d in man.get("data_files") or []:
        print(f"\nexternal data: {args.out}/{d['path']} ({d['bytes'] / 1e9:.2f} GB, shared by every entry)")
    if man.get("batch"):
        print(f"\ngraphs take {man['batch']} image per run (--batch {man['batch']}): larger batches run image by image")
    print(f"\nmanifest: {args.out}/manifest.json")
    return 0
