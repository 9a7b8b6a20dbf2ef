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
    from algm_export.models.checkpoint import BUILTIN_MODELS, DEFAULT_MODEL

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
                        f"{', '.join('builtin:' + n for n in BUILTIN_MODELS)} (default: %(default)s)")
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
    # Engine backends plug in here: an --engine option that sets PredictOptions.backend /
    # backend_options (see algm_export.predict.register_backend).
    p.set_defaults(func=cmd_predict)
    return p


def cmd_predict(args) -> int:
    from algm_export.predict import PredictOptions, format_table, parse_layers, run_predict

    opts = PredictOptions(
        model=args.model, threshold=args.threshold, layers=parse_layers(args.layers), algm=not args.no_algm,
        out=args.out, sliding=args.sliding, batch_size=args.batch_size, device=args.device,
        backend=getattr(args, "backend", "torch"), backend_options=getattr(args, "backend_options", {}) or {},
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


# ----------------------------------------------------------------------------- the table of commands

COMMANDS: list[Callable] = [
    add_predict_parser,
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
