"""The `algm-export` command line.

Every subcommand is a pair of functions, `add_<cmd>_parser(subparsers)` (which registers the
parser and sets `func=cmd_<cmd>`) and `cmd_<cmd>(args) -> int` (the exit code), plus one
entry in `COMMANDS`. Shared behaviour lives in `main`:

* `--debug` (before or after the subcommand): full tracebacks, debug logging, warning locations;
* an `AlgmError` prints `error: <message>` on stderr and exits 2 (no traceback without --debug);
* another exception prints a one-line `error: internal error ...` and exits 1;
* Ctrl-C exits 130; warnings are printed as `warning: <message>` (through tqdm, so progress
  bars stay intact); progress bars go to stderr, tables and results to stdout.
"""

from __future__ import annotations

import argparse
import logging
import platform
import sys
import traceback
import warnings
from typing import Callable, Optional, Sequence

from algm_export import __version__
from algm_export.errors import AlgmError

log = logging.getLogger("algm_export")


# ----------------------------------------------------------------------------- predict

def add_predict_parser(sub) -> argparse.ArgumentParser:
    from algm_export.models.registry import DEFAULT_MODEL, builtin_names

    p = sub.add_parser(
        "predict", parents=[_common()],
        help="segment images; write NAME_seg.png, NAME_merge.png, NAME_tokens.json",
        description="Segment image files with a Segmenter (+ ALGM token merging). Images larger than the model "
                    "input run the published sliding-window evaluation. Writes, per image, the colour-coded "
                    "segmentation, a picture of the merged patches (CLAP windows, GBM groups) and the token "
                    "counts per merge step.",
    )
    p.add_argument("images", nargs="+", metavar="IMAGE",
                   help="image files or folders; sample:NAME or sample:all for the photos bundled with scikit-image")
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"checkpoint.pth (variant.yml beside it), its folder, or one of "
                        f"{', '.join(builtin_names())} (default: %(default)s)")
    _config_arg(p)
    p.add_argument("--threshold", type=float, default=None,
                   help="CLAP threshold tau (default: the checkpoint's variant.yml, else the published value)")
    p.add_argument("--layers", default=None,
                   help="ALGM layers, 1-based: CLAP layer then GBM layers, e.g. 1,5 (default: checkpoint's or 1,5)")
    p.add_argument("--no-algm", action="store_true", help="run the plain Segmenter (no merging)")
    p.add_argument("--out", default="predictions", help="output folder (default: %(default)s)")
    p.add_argument("--sliding", action="store_true",
                   help="always use the sliding-window evaluation (default: only for images larger than the model)")
    p.add_argument("--batch-size", type=int, default=4, help="windows per forward pass (default: %(default)s)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: %(default)s)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no table")
    p.add_argument("--engine", default=None, metavar="FILE",
                   help="run an exported .onnx (ONNX Runtime) or a built .engine (TensorRT, needs a GPU) "
                        "instead of PyTorch; --model, --threshold and --layers must match it")
    _trust_arg(p)
    p.set_defaults(func=cmd_predict)
    return p


def cmd_predict(args) -> int:
    from algm_export.predict import PredictOptions, format_table, parse_layers, run_predict

    opts = PredictOptions(
        model=args.model, config=args.config, threshold=args.threshold, layers=parse_layers(args.layers), algm=not args.no_algm,
        out=args.out, sliding=args.sliding, batch_size=args.batch_size, device=args.device,
        backend="engine" if args.engine else "torch",
        backend_options={"engine": args.engine} if args.engine else {},
        trust_checkpoint=args.trust_checkpoint,
    )
    records = run_predict(args.images, opts, progress=not args.quiet)
    if not args.quiet:
        print(format_table(records))
        kinds = ["NAME_seg.png"] + (["NAME_merge.png"] if opts.algm else []) + ["NAME_tokens.json"]
        print(f"\n{len(records)} image(s) -> {opts.out}/ ({', '.join(kinds)})")
    return 0


# ----------------------------------------------------------------------------- version

def add_version_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("version", parents=[_common()], help="print the versions of algm-export and its tools",
                       description="Print the versions of algm-export, Python and the libraries it uses.")
    p.set_defaults(func=cmd_version)
    return p


def cmd_version(args) -> int:
    from algm_export.manifest import tool_versions

    print(f"algm-export {__version__}")
    print(f"python {platform.python_version()} ({platform.system()} {platform.machine()})")
    for name, ver in tool_versions().items():
        if name != "algm-export":
            print(f"{name} {ver}")
    try:
        import torch

        if torch.cuda.is_available():
            print(f"cuda {torch.version.cuda}: {torch.cuda.get_device_name(0)}")
        else:
            print("cuda: not available")
    except Exception as e:  # noqa: BLE001  (a broken CUDA setup must not break `version`)
        print(f"cuda: unknown ({e})")
    return 0


# ----------------------------------------------------------------------------- export

def _model_arg(p):
    from algm_export.models.registry import DEFAULT_MODEL, builtin_names

    p.add_argument("model", nargs="?", default=DEFAULT_MODEL, metavar="CHECKPOINT|BUILTIN",
                   help=f"checkpoint.pth (variant.yml beside it), an mmsegmentation checkpoint .pth (config .py "
                        f"beside it or --config), a folder holding either, or one of {', '.join(builtin_names())} "
                        "(default: %(default)s)")
    p.add_argument("extra_checkpoint", nargs="?", default=None, metavar="CHECKPOINT.pth", help=argparse.SUPPRESS)
    _config_arg(p)


def _config_arg(p):
    p.add_argument("--config", default=None, metavar="CONFIG.py",
                   help="the model's config file for mmsegmentation checkpoints (SETR, SegViT, EVA-02); parsed, "
                        "never executed (default: the one .py beside the checkpoint, else the checkpoint's meta)")


def _model_and_config(args) -> tuple[str, Optional[str]]:
    """`CHECKPOINT [--config CONFIG.py]`, or mmsegmentation's habit `CONFIG.py CHECKPOINT.pth`."""
    from algm_export.errors import ConfigError

    model, config = args.model, args.config
    extra = getattr(args, "extra_checkpoint", None)
    if extra is not None:
        if not str(model).endswith(".py") or config is not None:
            raise ConfigError(f"unexpected second argument {extra!r}; pass CHECKPOINT [--config CONFIG.py] "
                              "or CONFIG.py CHECKPOINT.pth")
        model, config = extra, model
    elif str(model).endswith(".py"):
        raise ConfigError(f"{model} is a config file; pass the checkpoint too: CONFIG.py CHECKPOINT.pth")
    return model, config


def _trust_arg(p):
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="unpickle the checkpoint completely, running any code it holds (default: weights-only, "
                        "which loads model, optimizer and scheduler state and refuses other objects); only for "
                        "checkpoints whose origin you trust (docs/security.md)")


def _wait_arg(p):
    p.add_argument("--wait", action="store_true",
                   help="when another algm-export run is writing to the folder, wait for it to finish "
                        "(default: stop with exit code 2 and name that run)")


def add_export_parser(sub):
    p = sub.add_parser("export", parents=[_common()], help="export the baseline and one ONNX per threshold setting",
                       description="Calibrate capacities per threshold setting on representative images, export "
                                   "the baseline and one static-shape ALGM ONNX per setting (custom algm ops with "
                                   "standard-op function bodies), and write DIR/manifest.json.")
    _model_arg(p)
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
    p.add_argument("--fp16", action="store_true", help="also write float16 graphs (for strongly typed engines)")
    p.add_argument("--force", action="store_true", help="re-export into a non-empty folder")
    _trust_arg(p)
    _wait_arg(p)
    p.set_defaults(func=cmd_export)


def cmd_export(args) -> int:
    from algm_export.calibrate import parse_capacities
    from algm_export.export.pipeline import export_folder
    from algm_export.merging.setting import parse_thresholds
    from algm_export.models.registry import resolve_model
    from algm_export.predict import parse_layers
    from algm_export.tables import format_table

    size = None if not args.image_size else (tuple(args.image_size) * 2)[:2]
    spec, config = _model_and_config(args)
    model = resolve_model(spec, config=config, image_size=size, trust_checkpoint=args.trust_checkpoint)
    man = export_folder(model, str(spec), args.out,
                        thresholds=None if args.thresholds is None else parse_thresholds(args.thresholds),
                        calib_images=args.calib_images, quantile=args.quantile, inline=args.inline, force=args.force,
                        layers=parse_layers(args.layers), fp16=args.fp16,
                        capacities=None if args.capacities is None else parse_capacities(args.capacities),
                        wait=args.wait)
    rows = [["baseline", "-", "-", "-", man["baseline"]["onnx"], "yes" if man["baseline"]["tensorrt_ready"] else "NO"]]
    for s in man["settings"]:
        cal = s["calibration"]
        mx = "-" if not cal.get("counts") else "/".join(str(max(c)) for c in cal["counts"])
        rows.append([s["name"], f"{s['threshold']:.3f}", ",".join(map(str, s["capacities"])), mx, s["onnx"],
                     "yes" if s["tensorrt_ready"] else "NO: " + "; ".join(s["tensorrt_problems"][:2])])
    print(format_table(["setting", "tau", "capacities", "max counts", "onnx", "TensorRT-ready"], rows))
    print(f"\nmanifest: {args.out}/manifest.json")
    return 0


# ----------------------------------------------------------------------------- validate

def add_validate_parser(sub):
    p = sub.add_parser("validate", parents=[_common()], help="parity of ONNX Runtime / TensorRT against PyTorch",
                       description="Run every exported setting in a backend and in PyTorch (static with the same "
                                   "capacities, and dynamic per_image); report logit differences, argmax agreement, "
                                   "parity mIoU, merge-decision flips and forced merges. Exits 3 below the limits.")
    p.add_argument("dir", metavar="DIR", help="export folder")
    p.add_argument("--images", default=None, metavar="DIR", help="images (default: the bundled sample photos)")
    p.add_argument("--backend", default="ort", choices=["ort", "trt"], help="backend to check (default: ort)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "fp16"])
    p.add_argument("--labels", default=None, metavar="DIR",
                   help="ADE20K-layout folder (images/, annotations/): also report the real mIoU of both")
    p.add_argument("--max-images", type=int, default=None, help="use at most this many images")
    p.add_argument("--min-agreement", type=float, default=None, help="per-image argmax agreement limit in %%")
    p.add_argument("--mean-agreement", type=float, default=None, help="mean argmax agreement limit in %%")
    p.add_argument("--parity-miou", type=float, default=None, help="parity mIoU limit")
    _trust_arg(p)
    _wait_arg(p)
    p.set_defaults(func=cmd_validate)


def cmd_validate(args) -> int:
    from algm_export.validate import Limits, format_report, validate

    lim = Limits.for_precision(args.precision)
    for k in ("min_agreement", "mean_agreement", "parity_miou"):
        if getattr(args, k) is not None:
            setattr(lim, k, getattr(args, k))
    rep = validate(args.dir, images=args.images, backend=args.backend, labels=args.labels, precision=args.precision,
                   limits=lim, limit_images=args.max_images, trust_checkpoint=args.trust_checkpoint,
                   wait=args.wait)
    print(format_report(rep))
    print(f"\nreport: {args.dir}/validation/report.{args.backend}.{args.precision}.json "
          f"(outputs load with `polygraphy run --load-outputs`)")
    return 0 if rep["pass"] else 3


# ----------------------------------------------------------------------------- build

def add_build_parser(sub):
    p = sub.add_parser("build", parents=[_common()], help="build TensorRT / TensorRT-RTX engines per setting",
                       description="Build the baseline engine and one engine per threshold setting of an export "
                                   "folder, with an optimization profile over the batch, and record them in the "
                                   "manifest. TensorRT-RTX builds ahead of time with no GPU.")
    p.add_argument("dir", metavar="DIR", help="export folder")
    p.add_argument("--backend", default=None, choices=["tensorrt", "tensorrt-rtx"],
                   help="default: tensorrt when importable, else tensorrt-rtx")
    p.add_argument("--plugins", default=None, metavar="LIB", help="algm plugin library (libalgm_plugins.so)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "fp16"])
    p.add_argument("--batch", default="1,1,8", help="MIN,OPT,MAX batch of the profile (default: %(default)s)")
    p.add_argument("--compute-capability", nargs="+", default=None, metavar="SM",
                   help="TensorRT-RTX targets, e.g. 86 89 (default: 86)")
    p.add_argument("--workspace", type=int, default=None, metavar="MB", help="builder workspace limit")
    _wait_arg(p)
    p.set_defaults(func=cmd_build)


def cmd_build(args) -> int:
    from algm_export.build import build_engines
    from algm_export.errors import ConfigError
    from algm_export.tables import format_table

    try:
        batch = [int(v) for v in args.batch.split(",")]
    except ValueError:
        raise ConfigError(f"--batch {args.batch!r}: give MIN,OPT,MAX, e.g. 1,4,8") from None
    if len(batch) == 1:
        batch = batch * 3
    ccs = None
    if args.compute_capability:
        try:
            ccs = [int(v) for a in args.compute_capability for v in str(a).replace(".", "").split(",") if v]
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


# ----------------------------------------------------------------------------- bench, report, demo

def add_bench_parser(sub):
    p = sub.add_parser("bench", parents=[_common()], help="latency/throughput side by side per setting and backend",
                       description="Benchmark the baseline and every setting on every backend present, interleaved "
                                   "in one run; prints the table and writes DIR/bench/bench.json and bench.png.")
    p.add_argument("dir", metavar="DIR", help="export folder")
    p.add_argument("--backends", default=None, help="comma-separated: torch,ort,trt (default: all present)")
    p.add_argument("--batch", default="1", help="comma-separated batch sizes (default: 1)")
    p.add_argument("--images", default=None, metavar="DIR", help="images (default: the bundled sample photos)")
    p.add_argument("--repeats", type=int, default=10, help="interleaved repeats (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch and ONNX Runtime (default: all)")
    p.add_argument("--settle-ms", type=float, default=50.0,
                   help="idle time before each timed run, so that the threads of the model that just ran stop "
                        "spinning on the cores (default: %(default)s; 0 runs back to back)")
    _trust_arg(p)
    _wait_arg(p)
    p.set_defaults(func=cmd_bench)


def cmd_bench(args) -> int:
    from algm_export.bench import bench, format_bench

    rep = bench(args.dir, backends=None if not args.backends else args.backends.split(","),
                batches=[int(b) for b in args.batch.split(",")], images=args.images, repeats=args.repeats,
                warmup=args.warmup, threads=args.threads, settle_s=args.settle_ms / 1e3,
                trust_checkpoint=args.trust_checkpoint, wait=args.wait)
    print(format_bench(rep))
    print(f"\nwritten: {args.dir}/bench/bench.json, {args.dir}/bench/bench.png")
    return 0


def add_report_parser(sub):
    p = sub.add_parser("report", parents=[_common()], help="write the HTML report of an export folder",
                       description="One self-contained HTML page: manifest, parity, speed, published numbers, "
                                   "merge pictures.")
    p.add_argument("dir", metavar="DIR", help="export folder")
    p.add_argument("--out", default=None, help="report folder (default: DIR/report)")
    p.add_argument("--images", type=int, default=3, help="sample photos to draw merges on (default: 3)")
    _trust_arg(p)
    _wait_arg(p)
    p.set_defaults(func=cmd_report)


def cmd_report(args) -> int:
    from algm_export.report.html import write_report

    page = write_report(args.dir, args.out, args.images, trust_checkpoint=args.trust_checkpoint, wait=args.wait)
    print(f"report: {page}")
    return 0


def add_demo_parser(sub):
    p = sub.add_parser("demo", parents=[_common()], help="the whole story on the built-in default model",
                       description="Export Segmenter ViT-S/16 512 (seeded weights) with three threshold settings, "
                                   "validate against PyTorch, benchmark side by side, write the HTML report.")
    p.add_argument("--out", default="algm-demo", help="folder (default: %(default)s)")
    p.add_argument("--model", default="builtin:vit_s16_512", help="model (default: %(default)s)")
    p.add_argument("--thresholds", default="0.85,0.88,0.92", help="(default: %(default)s)")
    p.add_argument("--repeats", type=int, default=5, help="benchmark repeats (default: %(default)s)")
    _trust_arg(p)
    p.set_defaults(func=cmd_demo)


def cmd_demo(args) -> int:
    from algm_export.demo import run_demo, summary_lines
    from algm_export.merging.setting import parse_thresholds

    res = run_demo(args.out, args.model, parse_thresholds(args.thresholds), repeats=args.repeats,
                   trust_checkpoint=args.trust_checkpoint)
    print(res["text"])
    print()
    print("\n".join(summary_lines(res)))
    return 0 if all(r["pass"] for r in res["validation"]) else 3


# ----------------------------------------------------------------------------- plugins

def add_plugins_parser(sub):
    p = sub.add_parser("plugins", parents=[_common()], help="build the CUDA kernels and TensorRT plugins",
                       description="Build plugins/ with CMake: the kernel library (nvcc alone) and, when TensorRT "
                                   "headers are found, the IPluginV3 plugin library.")
    sp = p.add_subparsers(dest="plugins_cmd", metavar="ACTION")
    b = sp.add_parser("build", parents=[_common()], help="run cmake and build")
    b.add_argument("--build-dir", default=None)
    b.add_argument("--tensorrt-include", default=None, metavar="DIR", help="TensorRT include/ folder")
    b.add_argument("--archs", default=None, help="CUDA architectures, e.g. 86,87,89 (default: Turing..Blackwell)")
    b.set_defaults(func=cmd_plugins_build)
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])


def cmd_plugins_build(args) -> int:
    from algm_export.plugins import build_plugins

    res = build_plugins(build_dir=args.build_dir, tensorrt_include=args.tensorrt_include, archs=args.archs)
    for k, v in (res.items() if isinstance(res, dict) else []):
        print(f"{k}: {v}")
    return 0


# ----------------------------------------------------------------------------- the table of commands

COMMANDS: list[Callable] = [
    add_demo_parser,
    add_export_parser,
    add_validate_parser,
    add_build_parser,
    add_bench_parser,
    add_report_parser,
    add_predict_parser,
    add_plugins_parser,
    add_version_parser,
]


def _common() -> argparse.ArgumentParser:
    """Options every subcommand accepts (after its name too)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                   help="show tracebacks and debug logging")
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="algm-export",
        description="Segmenter + ALGM token merging: predict, export to ONNX, build TensorRT engines, validate.",
    )
    parser.add_argument("--debug", action="store_true", default=False, help="show tracebacks and debug logging")
    parser.add_argument("--version", action="version", version=f"algm-export {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time (so redirections and test capture work)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def _setup_output(debug: bool):
    """Logging of the `algm_export` loggers to stderr; returns the `warnings.showwarning` to use."""
    log.setLevel(logging.DEBUG if debug else logging.INFO)
    # a plain command-line run has no logging set up: add ours (once); an embedding
    # application (or pytest) that configured the root logger keeps its own handlers
    if not logging.getLogger().handlers and not any(isinstance(h, _StderrHandler) for h in log.handlers):
        h = _StderrHandler()
        h.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
        log.addHandler(h)

    def show(message, category, filename, lineno, file=None, line=None):
        text = f"warning: {message}"
        if debug:
            text += f" [{category.__name__} at {filename}:{lineno}]"
        try:
            from tqdm import tqdm

            tqdm.write(text, file=sys.stderr)
        except Exception:  # noqa: BLE001
            print(text, file=sys.stderr)

    return show


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(None if argv is None else list(argv))
    except SystemExit as e:  # --help, --version, usage errors (argparse prints them)
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    debug = bool(getattr(args, "debug", False))
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        print("\nerror: choose a command", file=sys.stderr)
        return 2
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        warnings.showwarning = _setup_output(debug)
        try:
            return int(args.func(args) or 0)
        except AlgmError as e:
            if debug:
                traceback.print_exc()
            print(f"error: {e}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("\ninterrupted", file=sys.stderr)
            return 130
        except BrokenPipeError:  # e.g. `algm-export predict ... | head`
            return 0
        except Exception as e:  # noqa: BLE001
            if debug:
                traceback.print_exc()
                return 1
            msg = " ".join(str(e).split())
            print(f"error: internal error ({type(e).__name__}: {msg}); re-run with --debug for the traceback",
                  file=sys.stderr)
            return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
