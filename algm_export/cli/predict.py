"""`algm-export predict`: segment images or collections (optionally on Ray); write label maps, pictures, token counts."""

from __future__ import annotations

from algm_export.cli import args as a


def add_parser(sub):
    from algm_export.models.registry import DEFAULT_MODEL, builtin_names

    p = a.command_parser(
        sub, "predict", help="segment images or collections; write NAME_labels.png, NAME_seg.png, NAME_merge.png, "
                             "NAME_tokens.json",
        description="Segment image files, folders (recursively, sub-folders mirrored in the output) or lists with a "
                    "Segmenter (+ ALGM token merging). Images larger than the model input run the published "
                    "sliding-window evaluation. Writes, per image, the class ids (NAME_labels.png), the colour-coded "
                    "segmentation, a picture of the merged patches (CLAP windows, GBM groups) and the token counts "
                    "per merge step; for the run, results.jsonl (a line per image) and run.json. A rerun skips "
                    "the images already done with the same model and setting. --ray runs the same work on a Ray "
                    "cluster. Exit code 4: some images failed (see results.jsonl).",
        example="algm-export predict sample:all --out predictions\n"
                "algm-export predict photo.jpg --backend onnxruntime --engine out/t0.880.onnx\n"
                "algm-export predict photos/ --engine out/t0.880.onnx --no-merge --out seg/\n"
                "algm-export predict photos/ --engine out/t0.880.onnx --ray local --out seg/\n"
                "algm-export predict photo.jpg --engine out_dyn/tin_l1-5_dyn.onnx --threshold 0.85",
    )
    p.add_argument("images", nargs="*", metavar="IMAGE",
                   help="image files, folders (recursively) or globs ('photos/**/*.jpg', quoted); sample:NAME or "
                        "sample:all for the photos bundled with scikit-image")
    p.add_argument("--list", default=None, metavar="FILE", dest="list_file",
                   help="a text file naming one image (or folder) per line, relative to the file's folder")
    p.add_argument("--model", default=None,
                   help=f"checkpoint.pth (variant.yml beside it), its folder, or one of "
                        f"{', '.join(builtin_names())} (default: with --engine, the model of the export folder "
                        f"that lists the file; else {DEFAULT_MODEL})")
    a.config_arg(p)
    p.add_argument("--threshold", type=float, default=None,
                   help="CLAP threshold tau (default: the checkpoint's variant.yml, else the published value; "
                        "with --engine: a threshold-input file runs at it, default its first exported threshold, "
                        "and a file of an export folder with its threshold built in refuses another)")
    p.add_argument("--layers", default=None,
                   help="ALGM layers, 1-based: CLAP layer then GBM layers, e.g. 1,5 (default: checkpoint's or 1,5)")
    p.add_argument("--no-algm", action="store_true", help="run the plain Segmenter (no merging)")
    p.add_argument("--out", default="predictions", help="output folder (default: %(default)s)")
    p.add_argument("--no-seg", action="store_true", help="do not write NAME_seg.png (the colour-coded picture)")
    p.add_argument("--no-merge", action="store_true", help="do not write NAME_merge.png (the merge picture)")
    p.add_argument("--overwrite", action="store_true",
                   help="segment every image again (default: skip images whose outputs are complete for the same "
                        "model, setting and backend)")
    p.add_argument("--sliding", action="store_true",
                   help="always use the sliding-window evaluation (default: only for images larger than the model)")
    p.add_argument("--batch-size", type=int, default=4,
                   help="sliding windows of a large image per forward pass; where --grouping is on, also images "
                        "per forward; with --ray also images per batch an actor gets (default: %(default)s)")
    p.add_argument("--grouping", choices=("auto", "on", "off"), default="auto", dest="group",
                   help="with a dynamic-token --engine: on runs the images that fit the model --batch-size to a "
                        "forward, batched by similar token counts (a dynamic graph computes every image of a batch "
                        "at the batch's largest count); off runs one image per forward; auto (the default): on for "
                        "TensorRT and CUDA, off on a CPU, where one image per forward is the cheapest")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: %(default)s)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no table")
    p.add_argument("--backend", type=a.backend_type, default=None,
                   help=a.backend_help("torch, or with --engine: onnxruntime for .onnx, tensorrt for engines"))
    p.add_argument("--engine", default=None, metavar="FILE",
                   help="run an exported .onnx (ONNX Runtime) or a built .engine (TensorRT, needs a GPU) "
                        "instead of PyTorch; --model, --threshold and --layers must match it")
    a.trust_arg(p)
    a.wait_arg(p)
    r = p.add_argument_group("Ray (pip install 'algm-export[ray]')")
    r.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                   help="run on Ray: local (the default: a private cluster on this machine, stopped at the end), "
                        "auto (the cluster this machine joined) or ray://HOST:PORT; on a joined cluster the images, "
                        "the engine and --out must be on storage every node reads at the same paths")
    r.add_argument("--actors", type=int, default=None, metavar="N",
                   help="actors, each holding one runner (default: one per GPU with --gpus-per-actor, else one "
                        "per --cpus-per-actor CPUs)")
    r.add_argument("--cpus-per-actor", type=float, default=1.0, metavar="C",
                   help="CPUs each actor reserves (and its threads) (default: %(default)g)")
    r.add_argument("--gpus-per-actor", type=float, default=0.0, metavar="G",
                   help="GPUs each actor reserves; torch runs on that GPU (default: %(default)g)")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    from algm_export.core.setting import parse_layers
    from algm_export.tasks.predict import FAILED_EXIT, PredictOptions, format_table, run_predict
    from algm_export.tasks.predict.collection import SUFFIXES
    from algm_export.runtimes.registry import backend_for_file

    backend = args.backend or (backend_for_file(args.engine) if args.engine else "torch")
    opts = PredictOptions(
        model=args.model, config=args.config, threshold=args.threshold, layers=parse_layers(args.layers),
        algm=not args.no_algm, out=args.out, sliding=args.sliding, batch_size=args.batch_size, group=args.group,
        device=args.device,
        backend=backend, backend_options={"engine": args.engine} if args.engine else {},
        trust_checkpoint=args.trust_checkpoint, list_file=args.list_file, seg_png=not args.no_seg,
        merge_png=not args.no_merge, overwrite=args.overwrite, wait=args.wait, ray=args.ray, actors=args.actors,
        cpus_per_actor=args.cpus_per_actor, gpus_per_actor=args.gpus_per_actor,
    )
    res = run_predict(args.images, opts, progress=not args.quiet, keep_records=TABLE_ROWS + 1,
                      debug=getattr(args, "debug", False))
    if not args.quiet:
        shown = sorted((r for r in res["records"] if r["status"] != "failed"), key=lambda r: r["index"])
        if shown and len(shown) <= TABLE_ROWS and res["images"] <= TABLE_ROWS:
            print(format_table(shown))
            print()
        kinds = ", ".join(f"NAME{SUFFIXES[k]}" for k in res["outputs"])
        rate = f", {res['images_per_second']:.2f} images/s" if res["done"] and res["images_per_second"] else ""
        where = f" on Ray ({res['actors']} actors)" if res.get("executor") == "ray" else ""
        print(f"{res['images']} image(s): {res['done']} segmented, {res['skipped']} skipped (already done), "
              f"{res['failed']} failed{where} in {res['seconds']:.1f} s{rate} -> {opts.out}/ ({kinds}; "
              f"results.jsonl, run.json)")
        g = res.get("grouping") or {}
        if g.get("images"):
            print(f"dynamic token mode: {g['images']} image(s) in batches of up to {opts.batch_size} of similar token "
                  f"counts; FLOP ratio {g['flop_ratio_at_batch_max']:.2f} as computed (each image at its batch's "
                  f"largest count), {g['flop_ratio']:.2f} image by image")
    return FAILED_EXIT if res["failed"] else 0


TABLE_ROWS = 50
