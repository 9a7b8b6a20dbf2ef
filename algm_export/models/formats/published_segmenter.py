"""The published Segmenter / ALGM checkpoint format (format `published-segmenter`).

Layout (docs/algorithm.md, "Checkpoints"), as written by the published training script and read by its `load_model`::

    run/
      checkpoint.pth   {"model": state_dict, "n_cls": int, ...}   (optimizer state etc. optional)
      variant.yml      net_kwargs / dataset_kwargs / inference_kwargs

`save_segmenter` writes exactly the `net_kwargs` keys the published `create_segmenter` accepts
(an extra key would make the published loader fail), so checkpoints saved here load there too.
The published decoder dict is `{name: linear}` for the linear decoder and
`{name, n_layers, drop_path_rate, dropout}` for the mask transformer; the mask transformer's
`d_model`, `n_heads` and `d_ff` are derived from the encoder when the model is built
(`d_model = encoder d_model`, `n_heads = d_model // 64`, `d_ff = 4 * d_model`), never stored.

`load_segmenter` reads both our files and the published ones (whose `variant.yml` holds
`!!python/tuple` tags because it was written with `yaml.dump`), and turns every way a checkpoint
can be wrong into a `CheckpointError` that names the problem and the fix.

The format is recognised by its `variant.yml`: a checkpoint with `variant.yml` beside it, or a folder
holding both (`find`).

Checkpoints are unpickled weights-only (`models.formats.safe_load.load_checkpoint_file`): training state
loads, any other object is refused unless `trust_checkpoint=True` (CLI `--trust-checkpoint`).
`variant.yml` is parsed as data, never executed (`_VariantLoader`: no tag constructs an object).
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional

import torch
import yaml

from algm_export.core.errors import CheckpointError, ConfigError
from algm_export.core.names import pair
from algm_export.core.manifest import atomic_path
from algm_export.models.base import build_with_weights
from algm_export.models.families.segmenter import (
    ALIASES,
    BACKBONES,
    NORMALIZATION,
    DecoderConfig,
    Segmenter,
    SegmenterConfig,
)
from algm_export.models.formats import Format, register_format
from algm_export.models.formats.safe_load import load_checkpoint_file

CHECKPOINT = "checkpoint.pth"
VARIANT = "variant.yml"

# net_kwargs keys the published `create_segmenter` accepts (it passes them to its ViT).
NET_KWARGS_KEYS = ("backbone", "d_model", "n_heads", "n_layers", "patch_size", "image_size", "n_cls",
                   "distilled", "normalization", "dropout", "drop_path_rate", "decoder")
REQUIRED_NET_KWARGS = ("backbone", "d_model", "n_heads", "n_layers", "patch_size", "image_size", "n_cls",
                       "decoder")
# Parameters the checkpoint carries but segmentation never uses (ImageNet heads): tolerated when
# missing or of another shape (a checkpoint stripped of them still segments identically).
UNUSED_PREFIXES = ("encoder.head.", "encoder.head_dist.")


# ----------------------------------------------------------------------------- variant.yml I/O

class _VariantLoader(yaml.SafeLoader):
    """SafeLoader that also reads the `!!python/tuple` tags of published `variant.yml` files.

    Any other `!!python/...` tag is read as plain data (never executed).
    """


def _construct_python_tuple(loader, node):
    return list(loader.construct_sequence(node, deep=True))


def _construct_python_other(loader, suffix, node):
    if isinstance(node, yaml.SequenceNode):
        return list(loader.construct_sequence(node, deep=True))
    if isinstance(node, yaml.MappingNode):
        return dict(loader.construct_mapping(node, deep=True))
    return loader.construct_scalar(node)


_VariantLoader.add_constructor("tag:yaml.org,2002:python/tuple", _construct_python_tuple)
_VariantLoader.add_multi_constructor("tag:yaml.org,2002:python/", _construct_python_other)


def read_variant(path: str | Path) -> dict:
    """Read a `variant.yml` (ours or the published one). Raises CheckpointError when unusable."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"{path} is missing: a published-format checkpoint needs variant.yml beside checkpoint.pth "
            "(it describes the network); copy the variant.yml that came with this checkpoint next to it"
        )
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise CheckpointError(f"cannot read {path} ({e}); restore the variant.yml of this checkpoint") from e
    try:
        data = yaml.load(text, Loader=_VariantLoader)
    except yaml.YAMLError as e:
        msg = " ".join(str(e).split())
        raise CheckpointError(
            f"{path} is not valid YAML ({msg}); restore the variant.yml that came with this checkpoint"
        ) from e
    if not isinstance(data, Mapping):
        raise CheckpointError(
            f"{path} does not hold a mapping with net_kwargs (found {type(data).__name__}); "
            "restore the variant.yml that came with this checkpoint"
        )
    data = dict(data)
    net = data.get("net_kwargs")
    if not isinstance(net, Mapping):
        raise CheckpointError(
            f"{path} has no net_kwargs section: it is not a Segmenter variant.yml; "
            "restore the variant.yml that came with this checkpoint"
        )
    missing = [k for k in REQUIRED_NET_KWARGS if k not in net]
    if missing:
        raise CheckpointError(
            f"{path}: net_kwargs lacks {missing}; a Segmenter variant.yml names "
            f"{list(REQUIRED_NET_KWARGS)} (restore the variant.yml of this checkpoint)"
        )
    return data


def config_from_variant(variant: dict, where: str = "variant.yml") -> SegmenterConfig:
    """Build our SegmenterConfig from a published-format variant dict (net/dataset/inference kwargs)."""
    net = dict(variant["net_kwargs"])
    ds = dict(variant.get("dataset_kwargs") or {})
    inf = variant.get("inference_kwargs")

    def num(key, kind=int, src=net):
        v = src.get(key)
        try:
            if isinstance(v, bool):
                raise TypeError
            out = kind(v)
            if kind is int and out != float(v):
                raise ValueError
            return out
        except (TypeError, ValueError):
            raise CheckpointError(f"{where}: net_kwargs.{key} = {v!r} is not a number; fix variant.yml") from None

    backbone = str(net["backbone"])
    key = ALIASES.get(backbone.lower(), backbone)
    d_model, n_heads, n_layers = num("d_model"), num("n_heads"), num("n_layers")
    patch_size, n_cls = num("patch_size"), num("n_cls")
    if min(d_model, n_heads, n_layers, patch_size, n_cls) < 1:
        raise CheckpointError(f"{where}: net_kwargs has non-positive sizes ({net}); fix variant.yml")
    if d_model % n_heads:
        raise CheckpointError(f"{where}: d_model {d_model} is not a multiple of n_heads {n_heads}; fix variant.yml")
    try:
        image_size = pair(net["image_size"], "net_kwargs.image_size")
    except (ConfigError, TypeError, ValueError) as e:
        raise CheckpointError(f"{where}: net_kwargs.image_size = {net['image_size']!r} is not a size ({e})") from None
    if image_size[0] % patch_size or image_size[1] % patch_size:
        raise CheckpointError(
            f"{where}: image_size {list(image_size)} is not a multiple of patch_size {patch_size}; fix variant.yml"
        )
    reg_tokens = num("reg_tokens") if net.get("reg_tokens") is not None else 0   # not a published key
    if reg_tokens < 0:
        raise CheckpointError(f"{where}: net_kwargs.reg_tokens = {reg_tokens} is negative; fix variant.yml")
    distilled = net.get("distilled")
    if distilled is None:  # the published vit_large entries omit it
        distilled = BACKBONES.get(key, (0, 0, 0, "distilled" in backbone))[3]
    norm = net.get("normalization") or ds.get("normalization") or ("deit" if "deit" in backbone else "vit")
    if norm not in NORMALIZATION:
        raise CheckpointError(
            f"{where}: normalization {norm!r} unknown; use one of {sorted(NORMALIZATION)}"
        )

    dec = net.get("decoder")
    if isinstance(dec, str):
        dec = {"name": dec}
    if not isinstance(dec, Mapping) or "name" not in dec:
        raise CheckpointError(f"{where}: net_kwargs.decoder must be a mapping with a name (linear | mask_transformer)")
    dname = str(dec["name"])
    if dname == "mask_transformer":
        dd = dec.get("d_model")
        if dd is not None and int(dd) != d_model:
            raise CheckpointError(
                f"{where}: decoder d_model {dd} differs from the encoder's {d_model}; the published mask "
                "transformer always uses the encoder width (fix variant.yml)"
            )
        decoder = DecoderConfig(
            name="mask_transformer", n_layers=int(dec.get("n_layers", 2)),
            drop_path_rate=float(dec.get("drop_path_rate", 0.0)), dropout=float(dec.get("dropout", 0.1)),
        )
    elif "linear" in dname:  # the published factory accepts any name containing "linear"
        decoder = DecoderConfig(name="linear")  # other fields unused by the linear decoder
    else:
        raise CheckpointError(f"{where}: decoder {dname!r} unknown; use linear or mask_transformer")

    cfg = SegmenterConfig(
        backbone=key if key in BACKBONES else backbone, d_model=d_model, n_heads=n_heads, n_layers=n_layers,
        patch_size=patch_size, image_size=image_size, n_cls=n_cls, distilled=bool(distilled),
        normalization=norm, dropout=float(net.get("dropout") or 0.0),
        drop_path_rate=float(net.get("drop_path_rate") or 0.0), decoder=decoder,
        reg_tokens=reg_tokens,
    )
    cfg.algm = algm_from_variant(variant, where)
    if isinstance(inf, Mapping):
        cfg.inference = {k: inf[k] for k in ("im_size", "window_size", "window_stride") if inf.get(k) is not None}
        cfg.inference = cfg.inference or None
    return cfg


def algm_from_variant(variant: dict, where: str = "variant.yml") -> Optional[dict]:
    """The ALGM settings of `dataset_kwargs` (patch_type: algm), normalised; None for a plain run."""
    ds = variant.get("dataset_kwargs") or {}
    if not isinstance(ds, Mapping) or ds.get("patch_type") != "algm":
        return None
    from algm_export.core.setting import AlgmSetting

    try:
        s = AlgmSetting.from_variant({"dataset_kwargs": {k: v for k, v in ds.items() if v is not None}})
    except (ConfigError, TypeError, ValueError) as e:
        raise CheckpointError(f"{where}: ALGM settings in dataset_kwargs are unusable ({e}); fix variant.yml") from None
    return {"patch_type": "algm", "threshold": s.threshold, "selected_layers": list(s.layers),
            "merging_window_size": list(s.window)}


def make_variant(cfg: SegmenterConfig, algm=None, extra_variant: Optional[dict] = None) -> dict:
    """The published-format variant dict of a model config (see the module docstring)."""
    if cfg.decoder.name == "mask_transformer":
        decoder = {"name": "mask_transformer", "n_layers": int(cfg.decoder.n_layers),
                   "drop_path_rate": float(cfg.decoder.drop_path_rate), "dropout": float(cfg.decoder.dropout)}
    else:
        decoder = {"name": "linear"}
    H, W = (int(v) for v in cfg.image_size)
    net = {
        "backbone": cfg.backbone, "d_model": int(cfg.d_model), "n_heads": int(cfg.n_heads),
        "n_layers": int(cfg.n_layers), "patch_size": int(cfg.patch_size), "image_size": [H, W],
        "n_cls": int(cfg.n_cls), "distilled": bool(cfg.distilled), "normalization": cfg.normalization,
        "dropout": float(cfg.dropout), "drop_path_rate": float(cfg.drop_path_rate), "decoder": decoder,
    }
    if cfg.reg_tokens:   # not a published key: written only for models with register tokens
        net["reg_tokens"] = int(cfg.reg_tokens)
    inf = dict(cfg.inference or {})
    im_size = inf.get("im_size", min(H, W))
    ds: dict[str, Any] = {"dataset": "custom", "image_size": im_size, "crop_size": H if H == W else [H, W],
                          "normalization": cfg.normalization}
    if algm is None and cfg.algm:
        algm = cfg.algm
    if algm is not None:
        threshold, layers, window = _algm_fields(algm)
        ds.update(patch_type="algm", threshold=threshold, selected_layers=layers, merging_window_size=window)
    else:
        ds.update(patch_type="pure", threshold=None, selected_layers=None, merging_window_size=None)
    window = inf.get("window_size", H if H == W else [H, W])
    variant = {
        "net_kwargs": net,
        "dataset_kwargs": ds,
        "inference_kwargs": {"im_size": im_size, "window_size": window,
                             "window_stride": inf.get("window_stride", window)},
    }
    if extra_variant:
        _deep_update(variant, copy.deepcopy(dict(extra_variant)))
    return variant


def _algm_fields(algm) -> tuple[float, list, list]:
    """(threshold, layers, window) of an AlgmSetting (any object with those attributes), its
    `to_dict()`, or a dataset_kwargs-style dict (threshold, selected_layers, merging_window_size)."""
    if isinstance(algm, Mapping):
        layers = algm.get("layers", algm.get("selected_layers"))
        window = algm.get("window", algm.get("merging_window_size"))
        threshold = algm.get("threshold")
    elif all(hasattr(algm, k) for k in ("threshold", "layers", "window")):
        threshold, layers, window = algm.threshold, algm.layers, algm.window
    else:
        raise ConfigError(f"algm must be an AlgmSetting or a dict, got {type(algm).__name__}")
    if threshold is None:
        raise ConfigError(f"algm settings without a threshold: {algm!r}")
    window = pair(window if window is not None else 2, "merging_window_size")
    return float(threshold), list(layers if layers is not None else (1, 5)), list(window)


def _deep_update(dst: dict, src: Mapping) -> None:
    for k, v in src.items():
        if isinstance(v, Mapping) and isinstance(dst.get(k), dict):
            _deep_update(dst[k], v)
        else:
            dst[k] = v


# ----------------------------------------------------------------------------- save

def save_segmenter(model, out_dir: str | Path, algm=None, extra_variant: Optional[dict] = None,
                   extra_checkpoint: Optional[dict] = None) -> Path:
    """Write `out_dir/checkpoint.pth` + `out_dir/variant.yml` in the published format.

    model: a Segmenter (or an `AlgmModel`, whose setting is used when `algm` is None).
    algm: an AlgmSetting (or a dataset_kwargs-style dict) recorded in `dataset_kwargs`;
      None keeps the model's own `cfg.algm`, if any (else the run is marked `patch_type: pure`).
    extra_variant: merged (deeply) into the variant, e.g. {"dataset_kwargs": {"dataset": "ade20k"}}.
    extra_checkpoint: more entries for checkpoint.pth beside "model" (e.g. {"epoch": 63}).
    Both files are written atomically: an interrupted save leaves any previous pair untouched.
    Returns the path of checkpoint.pth.
    """
    if algm is None and hasattr(model, "setting") and hasattr(model, "model"):
        algm = model.setting
    if hasattr(model, "model") and isinstance(getattr(model, "model"), Segmenter):
        model = model.model
    if not isinstance(model, Segmenter):
        raise ConfigError(f"save_segmenter needs a Segmenter, got {type(model).__name__}")
    cfg = model.cfg
    variant = make_variant(cfg, algm, extra_variant)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    payload = {"model": state, "n_cls": int(cfg.n_cls)}
    if extra_checkpoint:
        payload.update({k: v for k, v in extra_checkpoint.items() if k != "model"})
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt = out_dir / CHECKPOINT
    with atomic_path(ckpt) as tmp_ckpt, atomic_path(out_dir / VARIANT) as tmp_var:
        torch.save(payload, tmp_ckpt)
        tmp_var.write_text(yaml.safe_dump(variant, sort_keys=True, default_flow_style=False))
    return ckpt


# ----------------------------------------------------------------------------- load

def find(p: Path, config: Optional[Path] = None, trust_checkpoint: bool = False) -> Optional[dict]:
    """{"checkpoint", "variant"} when `p` is a checkpoint with variant.yml beside it, or a folder
    holding variant.yml and its checkpoint (checkpoint.pth, or the folder's one .pth); else None."""
    if config is not None:  # a config file named: another format's
        return None
    folder = p if p.is_dir() else p.parent
    var = folder / VARIANT
    if not var.is_file():
        return None
    if p.is_file():
        return {"checkpoint": p, "variant": var}
    ckpt = p / CHECKPOINT
    if not ckpt.is_file():
        pths = sorted(p.glob("*.pth"))
        if len(pths) != 1:
            listed = f" (it holds {[q.name for q in pths][:5]}: pass one of them)" if pths else ""
            raise CheckpointError(f"{p} holds {VARIANT} but no {CHECKPOINT}{listed}; pass the checkpoint file, or a "
                                  f"folder holding {CHECKPOINT} and {VARIANT}")
        ckpt = pths[0]
    return {"checkpoint": ckpt, "variant": var}


FORMAT = register_format(Format(
    name="published-segmenter",
    describe=f"a checkpoint ({CHECKPOINT}) with {VARIANT} beside it, or their folder (the published Segmenter / "
             "ALGM format)",
    find=find,
))


def _extract_state_dict(obj, path: Path) -> dict:
    if isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
        sd = dict(obj["model"])
    elif isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()) \
            and any(str(k).startswith(("encoder.", "module.encoder.")) for k in obj):
        warnings.warn(f"{path} is a bare state dict, not {{'model': state_dict, ...}}; loading it anyway",
                      stacklevel=3)
        sd = dict(obj)
    else:
        what = type(obj).__name__
        if isinstance(obj, Mapping):
            what = f"a {what} with keys {sorted(map(str, obj))[:8]}"
        raise CheckpointError(
            f"{path} is not a Segmenter checkpoint: expected {{'model': state_dict, ...}}, found {what}; "
            "pass the checkpoint.pth of a Segmenter / ALGM run"
        )
    bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(
            f"{path}: the 'model' entry is not a state dict (non-tensor entries {bad[:5]}); "
            "pass the checkpoint.pth of a Segmenter / ALGM run"
        )
    if sd and all(k.startswith("module.") for k in sd):  # saved from a DistributedDataParallel wrapper
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def _short(keys: list, n: int = 8) -> str:
    keys = sorted(keys)
    more = f" ... and {len(keys) - n} more" if len(keys) > n else ""
    return "[" + ", ".join(keys[:n]) + "]" + more


def describe_state_dict(sd: Mapping[str, torch.Tensor]) -> str:
    """What a state dict looks like (width, depth, classes, decoder): used in mismatch messages."""
    parts = []
    cls = sd.get("encoder.cls_token")
    if cls is not None:
        d = int(cls.shape[-1])
        depth = len({k.split(".")[2] for k in sd if k.startswith("encoder.blocks.")})
        guess = [n for n, v in BACKBONES.items() if v[0] == d and v[2] == depth]
        parts.append(f"d_model={d}, {depth} blocks" + (f" (like {guess[0]})" if guess else ""))
    if "encoder.dist_token" in sd:
        parts.append("distilled")
    pe = sd.get("encoder.proj.weight", sd.get("encoder.patch_embed.proj.weight"))
    if pe is not None:
        parts.append(f"patch_size={int(pe.shape[-1])}")
    if "decoder.head.weight" in sd:
        parts.append(f"linear decoder, n_cls={int(sd['decoder.head.weight'].shape[0])}")
    elif "decoder.cls_emb" in sd:
        parts.append(f"mask_transformer decoder, n_cls={int(sd['decoder.cls_emb'].shape[1])}")
    return ", ".join(parts) or "no recognisable Segmenter keys"


def _check_keys(model: Segmenter, sd: dict, cfg: SegmenterConfig, strict: bool, where: str) -> dict:
    expected = model.state_dict()
    unused = lambda k: k.startswith(UNUSED_PREFIXES)  # noqa: E731
    missing = [k for k in expected if k not in sd and not unused(k)]
    unexpected = [k for k in sd if k not in expected]
    shapes = [f"{k}: checkpoint {list(sd[k].shape)} vs variant.yml {list(expected[k].shape)}"
              for k in expected if k in sd and sd[k].shape != expected[k].shape and not unused(k)]
    load = {k: v for k, v in sd.items() if k in expected and v.shape == expected[k].shape}
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys {_short(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_short(unexpected)}")
        if shapes:
            parts.append(f"shape mismatches {_short(shapes, 4)}")
        msg = (f"checkpoint does not match variant.yml: {'; '.join(parts)}; the weights have "
               f"{describe_state_dict(sd)}, variant.yml describes {cfg.backbone} (d_model={cfg.d_model}, "
               f"{cfg.n_layers} blocks, {cfg.decoder.name} decoder, n_cls={cfg.n_cls}); "
               f"check that variant.yml belongs to this checkpoint ({where})")
        if strict:
            raise CheckpointError(msg)
        warnings.warn(msg + "; strict=False: loading only the matching tensors", stacklevel=3)
    return load


def load_segmenter(path: str | Path, image_size=None, strict: bool = True,
                   trust_checkpoint: bool = False, variant_path: str | Path | None = None) -> Segmenter:
    """Load a published-format checkpoint: `path` = checkpoint.pth or its folder (variant.yml beside it).

    image_size: run size (int or (H, W)) if different from the checkpoint's; the grid part of
      `pos_embed` is resized bilinearly once (align_corners=False, prefix kept), exactly what
      `Segmenter.embed` does per call, and `cfg.image_size` becomes the run size.
    strict: refuse any missing / unexpected / mis-shaped key (the unused ImageNet heads
      `encoder.head*` may be absent). strict=False loads what matches and warns.
    trust_checkpoint: False (default) unpickles weights-only (`models.safe_load`): tensors, plain
      values, optimizer / scheduler / GradScaler state and numpy values load, any other object is
      refused with a CheckpointError naming its type. True unpickles everything, which runs
      whatever code the file's author put in it: only for checkpoints whose origin you trust.

    The model is in eval mode; `model.cfg` carries `algm` (dataset_kwargs of ALGM runs) and
    `inference` (inference_kwargs); `model.variant` is the whole variant dict,
    `model.checkpoint_path` the file, `model.checkpoint_image_size` the trained size.
    """
    ckpt = Path(path).expanduser()
    if ckpt.is_dir():
        if not (ckpt / CHECKPOINT).is_file():
            others = sorted(q.name for q in ckpt.glob("*.pth"))
            hint = f" (it holds {others}: pass one of them)" if others else ""
            raise CheckpointError(f"no {CHECKPOINT} in {ckpt}{hint}; pass a checkpoint file or a folder holding "
                                  f"{CHECKPOINT} and {VARIANT}")
        ckpt = ckpt / CHECKPOINT
    elif not ckpt.exists():
        raise CheckpointError(f"checkpoint {ckpt} does not exist; pass {CHECKPOINT} (with {VARIANT} beside it) or "
                              "its folder")
    var_path = Path(variant_path).expanduser() if variant_path is not None else ckpt.parent / VARIANT
    variant = read_variant(var_path)
    cfg = config_from_variant(variant, str(var_path))
    obj = load_checkpoint_file(ckpt, trust=trust_checkpoint)
    sd = _extract_state_dict(obj, ckpt)
    try:
        with torch.device("meta"):
            shape_only = Segmenter(cfg)
    except ConfigError as e:
        raise CheckpointError(f"{var_path}: cannot build the network it describes ({e})") from e
    load = _check_keys(shape_only, sd, cfg, strict, f"{ckpt}, {var_path}")
    del shape_only, sd, obj
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_with_weights(lambda: Segmenter(cfg), load)   # the checkpoint's tensors, no second copy
    model.eval()
    model.variant = variant
    model.checkpoint_path = ckpt
    model.source_files = {"checkpoint": ckpt, "variant": var_path}
    model.checkpoint_image_size = tuple(cfg.image_size)
    model.source = str(ckpt)
    if image_size is not None:
        set_image_size(model, image_size)
    return model


def set_image_size(model: Segmenter, image_size) -> Segmenter:
    """Re-target a model to another run size: resize the pos_embed grid (bilinear) and update cfg."""
    return model.set_image_size(image_size)


__all__ = [
    "CHECKPOINT", "FORMAT", "VARIANT", "algm_from_variant", "config_from_variant", "describe_state_dict", "find",
    "load_segmenter", "make_variant", "read_variant", "save_segmenter", "set_image_size",
]
