"""The `algm-export` entry point: wires the commands of `algm_export.cli` and handles errors.

Every command is a module `algm_export.cli.<name>` with `add_parser(subparsers)` (which
registers the parser and sets `func=run`) and `run(args) -> int` (the exit code). Shared
behaviour lives in `main`:

* `--debug` (before or after the subcommand): full tracebacks, debug logging, warning locations;
* an `AlgmError` prints `error: <message>` on stderr and exits 2 (no traceback without --debug);
* another exception prints a one-line `error: internal error ...` and exits 1;
* Ctrl-C exits 130; warnings are printed as `warning: <message>` (through tqdm, so progress
  bars stay intact); progress bars go to stderr, tables and results to stdout.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import traceback
import warnings
from typing import Optional, Sequence

from algm_export import __version__
from algm_export.cli import NAMES
from algm_export.core.errors import AlgmError

log = logging.getLogger("algm_export")


def command_modules() -> list:
    """The command modules, in the order of `algm-export --help`."""
    return [importlib.import_module(f"algm_export.cli.{n}") for n in NAMES]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="algm-export",
        description="Segmenter + ALGM token merging: predict, export to ONNX, build TensorRT engines, validate.",
    )
    parser.add_argument("--debug", action="store_true", default=False, help="show tracebacks and debug logging")
    parser.add_argument("--version", action="version", version=f"algm-export {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod in command_modules():
        mod.add_parser(sub)
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


def _run(args) -> int:
    """The command; with ALGM_PROFILE_MEMORY=1 its peak resident memory is printed at the end
    (`core.progress.stage` prints each stage's)."""
    from algm_export.core.progress import overall_peak_rss, profiling_memory

    try:
        return int(args.func(args) or 0)
    finally:
        if profiling_memory():
            peak = overall_peak_rss()
            if peak:
                print(f"[memory] {args.command if hasattr(args, 'command') else 'command'}: peak RSS "
                      f"{peak / 2**30:.2f} GiB", file=sys.stderr, flush=True)


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
            return _run(args)
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
