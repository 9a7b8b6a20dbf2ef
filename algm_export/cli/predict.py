"""`algm-export predict`: segment images; write NAME_seg.png, NAME_merge.png, NAME_tokens.json."""

from __future__ import annotations

from algm_export.cli import args as a


def add_parser(sub):
    from algm_export.models.registry import DEFAULT_MODEL, builtin_names

    p = a.command_parser(
        sub, "predict", help="segment images; write NAME_seg.png, NAME_merge.png, NAME_tokens.json",
        description="Segment image files with a Segmenter (+ ALGM token merging). Images larger than the model "
                    "input run the published sliding-window evaluation. Writes, per image, the colour-coded "
                    "segmentation, a picture of the merged patches (CLAP windows, GBM groups) and the token "
                    "counts per merge step.",
        example="algm-export predict sample:all --out predictions\n"
                "algm-export predict photo.jpg --backend onnxruntime --engine out/t0.880.onnx\n"
                "algm-export predict photo.jpg --engine out_dyn/tin_l1-5_dyn.onnx --threshold 0.85",
    )
    p.add_argument("images", nargs="+", metavar="IMAGE",
                   help="image files or folders; sample:NAME or sample:all for the photos bundled with scikit-image")
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"checkpoint.pth (variant.yml beside it), its folder, or one of "
                        f"{', '.join(builtin_names())} (default: %(default)s)")
    a.config_arg(p)
    p.add_argument("--threshold", type=float, default=None,
                   help="CLAP threshold tau (default: the checkpoint's variant.yml, else the published value; "
                        "with --engine: a threshold-input file runs at it, default its first exported threshold, "
                        "and a file of an export folder with its threshold built in refuses another)")
    p.add_argument("--layers", default=None,
                   help="ALGM layers, 1-based: CLAP layer then GBM layers, e.g. 1,5 (default: checkpoint's or 1,5)")
    p.add_argument("--no-algm", action="store_true", help="run the plain Segmenter (no merging)")
    p.add_argument("--out", default="predictions", help="output folder (default: %(default)s)")
    p.add_argument("--sliding", action="store_true",
                   help="always use the sliding-window evaluation (default: only for images larger than the model)")
    p.add_argument("--batch-size", type=int, default=4, help="windows per forward pass (default: %(default)s)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: %(default)s)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no table")
    p.add_argument("--backend", type=a.backend_type, default=None,
                   help=a.backend_help("torch, or with --engine: onnxruntime for .onnx, tensorrt for engines"))
    p.add_argument("--engine", default=None, metavar="FILE",
                   help="run an exported .onnx (ONNX Runtime) or a built .engine (TensorRT, needs a GPU) "
                        "instead of PyTorch; --model, --threshold and --layers must match it")
    a.trust_arg(p)
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    from algm_export.core.setting import parse_layers
    from algm_export.tasks.predict import PredictOptions, format_table, run_predict
    from algm_export.runtimes.registry import backend_for_file

    backend = args.backend or (backend_for_file(args.engine) if args.engine else "torch")
    opts = PredictOptions(
        model=args.model, config=args.config, threshold=args.threshold, layers=parse_layers(args.layers),
        algm=not args.no_algm, out=args.out, sliding=args.sliding, batch_size=args.batch_size, device=args.device,
        backend=backend, backend_options={"engine": args.engine} if args.engine else {},
        trust_checkpoint=args.trust_checkpoint,
    )
    records = run_predict(args.images, opts, progress=not args.quiet)
    if not args.quiet:
        print(format_table(records))
        kinds = ["NAME_seg.png"] + (["NAME_merge.png"] if opts.algm else []) + ["NAME_tokens.json"]
        print(f"\n{len(records)} image(s) -> {opts.out}/ ({', '.join(kinds)})")
    return 0
