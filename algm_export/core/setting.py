"""`AlgmSetting`: one ALGM operating point (threshold, window, layers, batch policy)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Optional, Sequence

from algm_export.core.errors import ConfigError

POLICIES = ("per_image", "batch_min")


@dataclass(frozen=True)
class AlgmSetting:
    """threshold: CLAP's cosine threshold tau; window: CLAP window (wh, ww);
    layers: 1-based block numbers, the first runs CLAP, the others GBM (divisor = layer number);
    policy: "per_image" (ours, batch-independent) or "batch_min" (the published batch coupling).
    """

    threshold: float = 0.88
    window: tuple[int, int] = (2, 2)
    layers: tuple[int, ...] = (1, 5)
    policy: str = "per_image"

    def __post_init__(self):
        object.__setattr__(self, "window", tuple(int(v) for v in self.window))
        object.__setattr__(self, "layers", tuple(int(v) for v in self.layers))
        t = float(self.threshold)
        if not math.isfinite(t) or not -1.0 <= t <= 1.0:
            raise ConfigError(f"threshold {self.threshold!r} is outside [-1, 1]: it is a cosine similarity")
        object.__setattr__(self, "threshold", t)
        if len(self.window) != 2 or min(self.window) < 1 or self.window[0] * self.window[1] < 2:
            raise ConfigError(f"window {self.window!r} must be two positive numbers with at least 2 tokens (e.g. 2 2)")
        if not self.layers:
            raise ConfigError("layers must name at least the CLAP layer (e.g. 1 5)")
        if any(l < 1 for l in self.layers) or list(self.layers) != sorted(set(self.layers)):
            raise ConfigError(
                f"layers {self.layers!r} must be increasing 1-based block numbers; CLAP is the first, GBM the others"
            )
        if self.policy not in POLICIES:
            raise ConfigError(f"policy {self.policy!r} unknown; use one of {POLICIES}")

    @property
    def steps(self) -> int:
        return len(self.layers)

    @property
    def name(self) -> str:
        lay = "-".join(str(l) for l in self.layers)
        extra = "" if self.window == (2, 2) else f"_w{self.window[0]}x{self.window[1]}"
        extra += "" if self.policy == "per_image" else "_bmin"
        return f"t{self.threshold:.3f}_l{lay}{extra}"

    def with_threshold(self, t: float) -> "AlgmSetting":
        """The same setting at another CLAP threshold (threshold-input graphs serve several)."""
        return AlgmSetting(t, self.window, self.layers, self.policy)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["window"] = list(self.window)
        d["layers"] = list(self.layers)
        return d

    def check_model(self, n_layers: int, grid: Sequence[int]) -> None:
        """Refuse settings that cannot run on a model with `n_layers` blocks and this patch grid."""
        if self.layers[-1] > n_layers:
            raise ConfigError(
                f"layer {self.layers[-1]} is outside the model, which has {n_layers} blocks; use layers <= {n_layers}"
            )
        gh, gw = grid
        wh, ww = self.window
        if gh % wh or gw % ww:
            raise ConfigError(
                f"window {wh}x{ww} does not divide the patch grid {gh}x{gw}; choose an image size whose grid "
                f"is a multiple of the window (image side = multiple of patch x window)"
            )

    @classmethod
    def from_variant(cls, variant: dict, policy: str = "per_image") -> "AlgmSetting":
        """From a published `variant.yml` (its `dataset_kwargs` carry the ALGM settings)."""
        ds = (variant or {}).get("dataset_kwargs", variant or {})
        if ds.get("patch_type", "algm") != "algm" or "threshold" not in ds:
            raise ConfigError("variant.yml has no ALGM settings (dataset_kwargs: patch_type: algm, threshold, ...)")
        win = ds.get("merging_window_size", (2, 2))
        if isinstance(win, int):
            win = (win, win)
        layers = ds.get("selected_layers", (1, 5))
        return cls(float(ds["threshold"]), tuple(win), tuple(layers), policy)


def parse_layers(text: "str | Sequence[int] | None") -> Optional[tuple[int, ...]]:
    """'1,5' -> (1, 5). ConfigError on anything else."""
    if text is None:
        return None
    if not isinstance(text, str):
        return tuple(int(v) for v in text)
    try:
        vals = tuple(int(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError:
        raise ConfigError(f"--layers {text!r}: give comma-separated 1-based block numbers, e.g. 1,5") from None
    if not vals:
        raise ConfigError("--layers is empty; give e.g. 1,5 (CLAP layer, then GBM layers)")
    return vals


def parse_thresholds(text: str) -> list[float]:
    try:
        vals = [float(v) for v in str(text).replace(" ", "").split(",") if v]
    except ValueError as e:
        raise ConfigError(f"--thresholds {text!r}: give comma-separated numbers, e.g. 0.86,0.88,0.90") from e
    if not vals:
        raise ConfigError("--thresholds is empty; give e.g. 0.86,0.88,0.90")
    return vals


def default_setting(threshold: Optional[float] = None, n_layers: int = 12) -> AlgmSetting:
    """Published layers: (1, 5) for 12-block ViTs, (1, 7) for 24-block ViT-L."""
    layers = (1, 7) if n_layers >= 24 else (1, 5)
    return AlgmSetting(0.88 if threshold is None else threshold, (2, 2), layers)
