"""Model configurations: the published Segmenter backbones, decoders and normalisations."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional

from algm_export.core.errors import ConfigError

# name -> (d_model, n_heads, n_layers, distilled)
BACKBONES: dict[str, tuple[int, int, int, bool]] = {
    "vit_tiny_patch16_384": (192, 3, 12, False),
    "vit_small_patch16_384": (384, 6, 12, False),
    "vit_base_patch16_384": (768, 12, 12, False),
    "vit_large_patch16_384": (1024, 16, 24, False),
    "deit_tiny_distilled_patch16_224": (192, 3, 12, True),
    "deit_small_distilled_patch16_224": (384, 6, 12, True),
    "deit_base_distilled_patch16_224": (768, 12, 12, True),
}
# Short names accepted everywhere a backbone is named.
ALIASES = {
    "vit_tiny": "vit_tiny_patch16_384", "vit_ti": "vit_tiny_patch16_384", "vit-ti": "vit_tiny_patch16_384",
    "vit_small": "vit_small_patch16_384", "vit_s": "vit_small_patch16_384", "vit-s": "vit_small_patch16_384",
    "vit_base": "vit_base_patch16_384", "vit_b": "vit_base_patch16_384", "vit-b": "vit_base_patch16_384",
    "vit_large": "vit_large_patch16_384", "vit_l": "vit_large_patch16_384", "vit-l": "vit_large_patch16_384",
    "deit_tiny": "deit_tiny_distilled_patch16_224", "deit_small": "deit_small_distilled_patch16_224",
    "deit_base": "deit_base_distilled_patch16_224",
}

# Published normalisations (Segmenter `STATS`).
NORMALIZATION = {
    "vit": {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)},
    "deit": {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)},
}


def resolve_backbone(name: str) -> str:
    key = ALIASES.get(name.lower(), name)
    if key not in BACKBONES:
        raise ConfigError(
            f"unknown backbone {name!r}; choose one of {sorted(BACKBONES)} (or short names {sorted(ALIASES)})"
        )
    return key


@dataclass
class DecoderConfig:
    name: str = "linear"  # "linear" | "mask_transformer"
    n_layers: int = 2
    drop_path_rate: float = 0.0
    dropout: float = 0.1


@dataclass
class SegmenterConfig:
    backbone: str = "vit_small_patch16_384"
    d_model: int = 384
    n_heads: int = 6
    n_layers: int = 12
    patch_size: int = 16
    image_size: tuple[int, int] = (512, 512)
    n_cls: int = 150
    distilled: bool = False
    normalization: str = "vit"
    dropout: float = 0.0
    drop_path_rate: float = 0.1
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    # ALGM settings found in a checkpoint's variant.yml (dataset_kwargs), if any.
    algm: Optional[dict] = None
    # Published evaluation settings (inference_kwargs), if any.
    inference: Optional[dict] = None

    family = "segmenter"

    @property
    def num_prefix(self) -> int:
        return 2 if self.distilled else 1

    @property
    def decoder_name(self) -> str:
        return self.decoder.name

    @property
    def grid(self) -> tuple[int, int]:
        return (self.image_size[0] // self.patch_size, self.image_size[1] // self.patch_size)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["image_size"] = list(self.image_size)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "SegmenterConfig":
        d = dict(d)
        dec = d.pop("decoder", None) or {}
        cfg = cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__ and k != "decoder"})
        cfg.decoder = dec if isinstance(dec, DecoderConfig) else DecoderConfig(
            **{k: v for k, v in dec.items() if k in DecoderConfig.__dataclass_fields__}
        )
        cfg.image_size = _pair(cfg.image_size)
        return cfg


def _pair(v) -> tuple[int, int]:
    if isinstance(v, (list, tuple)):
        if len(v) != 2:
            raise ConfigError(f"image size {v!r} must be one number or two (H, W)")
        return (int(v[0]), int(v[1]))
    return (int(v), int(v))


def make_config(
    backbone: str = "vit_small",
    decoder: str = "linear",
    image_size=512,
    n_cls: int = 150,
    patch_size: int = 16,
    normalization: Optional[str] = None,
) -> SegmenterConfig:
    name = resolve_backbone(backbone)
    d_model, n_heads, n_layers, distilled = BACKBONES[name]
    if decoder not in ("linear", "mask_transformer"):
        raise ConfigError(f"unknown decoder {decoder!r}; use 'linear' or 'mask_transformer'")
    norm = normalization or ("deit" if name.startswith("deit") else "vit")
    if norm not in NORMALIZATION:
        raise ConfigError(f"unknown normalization {norm!r}; use 'vit' or 'deit'")
    return SegmenterConfig(
        backbone=name, d_model=d_model, n_heads=n_heads, n_layers=n_layers, patch_size=patch_size,
        image_size=_pair(image_size), n_cls=n_cls, distilled=distilled, normalization=norm,
        decoder=DecoderConfig(name=decoder, n_layers=2),
    )
