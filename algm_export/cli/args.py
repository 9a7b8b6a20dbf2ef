"""Options shared by several commands, so that one option means one thing everywhere."""

from __future__ import annotations

import argparse
from typing import Optional

from algm_export.core.names import PRECISIONS



def command_parser(sub, name: str, help: str, description: str, example: str) -> argparse.ArgumentParser:
    """A subcommand parser with the common options, the model families it takes and an example in its epilog."""
    from algm_export.models.registry import families_line

    description = f"{description}\n\nModel families: {families_line()} (docs/models.md)."
    return sub.add_parser(name, parents=[common()], help=help, description=description,
                          epilog="example:\n  " + example.strip().replace("\n", "\n  "),
                          formatter_class=argparse.RawDescriptionHelpFormatter)


def common() -> argparse.ArgumentParser:
    """Options every subcommand accepts (after its name too)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                   help="show tracebacks and debug logging")
    return p


def export_dir_arg(p):
    p.add_argument("dir", metavar="DIR", help="export folder")


def images_arg(p):
    p.add_argument("--images", default=None, metavar="DIR", help="images (default: the bundled sample photos)")


def precision_arg(p, help="fp32 or fp16 (default: %(default)s)"):
    p.add_argument("--precision", default="fp32", choices=PRECISIONS, help=help)


def thresholds_type(text: str) -> list:
    """`0.85,0.88` -> [0.85, 0.88] (a usage error for anything else, or a value outside [-1, 1])."""
    try:
        vals = [float(v) for v in str(text).replace(" ", "").split(",") if v]
    except ValueError:
        vals = []
    if not vals or any(not -1.0 <= v <= 1.0 for v in vals):
        raise argparse.ArgumentTypeError(f"{text!r}: give comma-separated CLAP thresholds in [-1, 1], e.g. 0.85,0.88")
    return vals


def thresholds_arg(p):
    """The thresholds to run entries that take the threshold as an input at (validate, bench)."""
    p.add_argument("--threshold", type=thresholds_type, default=None, metavar="T[,T...]",
                   help="run entries exported with --threshold-input at these CLAP thresholds (default: the "
                        "thresholds they were exported for); entries with a built-in threshold are unaffected")


def backend_help(default: str) -> str:
    from algm_export.runtimes.registry import ALIASES, BACKENDS

    return (f"{', '.join(BACKENDS)} (aliases: {', '.join(f'{a}={b}' for a, b in ALIASES.items())}); "
            f"default: {default}")


def backend_type(text: str) -> str:
    from algm_export.core.errors import ConfigError
    from algm_export.runtimes.registry import normalize_backend

    try:
        return normalize_backend(text)
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def backends_type(text: str, served: bool = False) -> list:
    from algm_export.core.errors import ConfigError
    from algm_export.runtimes.registry import parse_backends

    try:
        return parse_backends(text, served)
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def served_backends_type(text: str) -> list:
    """`backends_type` that also takes `triton` (the folder served by Triton: bench)."""
    return backends_type(text, served=True)


def config_arg(p):
    p.add_argument("--config", default=None, metavar="CONFIG",
                   help="the model's config file: a .py for mmsegmentation checkpoints (SETR, SegViT, EVA-02), the "
                        "LightningCLI config.yaml for EoMT; parsed, never executed (default: the one beside the "
                        "checkpoint, else the checkpoint's meta / hyper-parameters)")


def model_arg(p):
    from algm_export.models.registry import DEFAULT_MODEL, builtin_names

    p.add_argument("model", nargs="?", default=DEFAULT_MODEL, metavar="CHECKPOINT|BUILTIN",
                   help=f"a checkpoint of any family below, or its folder (the format is recognised by what the "
                        f"files hold: checkpoint.pth with variant.yml beside it, an mmsegmentation .pth with its config "
                        f".py beside it or --config, EoMT's pytorch_model.bin / .ckpt with config.yaml, ...), or one of {', '.join(builtin_names())} "
                        "(default: %(default)s)")
    p.add_argument("extra_checkpoint", nargs="?", default=None, metavar="CHECKPOINT.pth", help=argparse.SUPPRESS)
    config_arg(p)


def model_and_config(args) -> tuple[str, Optional[str]]:
    """`CHECKPOINT [--config CONFIG.py]`, or mmsegmentation's habit `CONFIG.py CHECKPOINT.pth`."""
    from algm_export.core.errors import ConfigError

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


def trust_arg(p):
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="unpickle the checkpoint completely, running any code it holds (default: weights-only, "
                        "which loads model, optimizer and scheduler state and refuses other objects); only for "
                        "checkpoints whose origin you trust (docs/security.md)")


def wait_arg(p):
    p.add_argument("--wait", action="store_true",
                   help="when another algm-export run is writing to the folder, wait for it to finish "
                        "(default: stop with exit code 2 and name that run)")
