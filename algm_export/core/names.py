"""Names and small helpers that several layers share: one definition each."""

from __future__ import annotations

from algm_export.core.errors import ConfigError

PRECISIONS = ("fp32", "fp16")          # graph / engine precisions
TOKEN_MODES = ("static", "dynamic")    # exportable token modes ("reference" is the eager published method)
# The fixed batches a graph can be exported for (`export --batch 1`, a manifest's `batch`); None (the
# default) is a dynamic batch axis. One image per run drops the padding mask of dynamic token mode.
FIXED_BATCHES = (1,)
ANSWERS = ("logits", "labels")         # what a request to a served model may ask for (`bench --answer`)
# Normalisations by name (the published Segmenter `STATS`): what a manifest's `normalization` may name.
NORMALIZATION = {
    "vit": {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)},
    "deit": {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)},
}


def pair(v, name: str = "size") -> tuple[int, int]:
    """(H, W) from one number or a one- or two-element sequence; ConfigError naming `name` otherwise.

    >>> pair(512), pair([512, 1024]), pair((16,))
    ((512, 512), (512, 1024), (16, 16))
    """
    if isinstance(v, bool):
        raise ConfigError(f"{name} must be a size, got {v!r}")
    if isinstance(v, (list, tuple)):
        if len(v) not in (1, 2):
            raise ConfigError(f"{name} {v!r} must be one number or two (H, W)")
        out = (int(v[0]), int(v[-1]))
    else:
        try:
            out = (int(v), int(v))
        except (TypeError, ValueError):
            raise ConfigError(f"{name} must be one number or two (H, W), got {v!r}") from None
    if min(out) < 1:
        raise ConfigError(f"{name} {v!r} must be positive")
    return out
