"""EoMT checkpoints as the published training code writes them, read without running any code.

Files (a checkpoint file, or a folder holding one):

* `pytorch_model.bin`: the Lightning module's `state_dict()` (what the published model zoo
  ships), or a Lightning `.ckpt` (`{'state_dict', 'hyper_parameters', ...}`); both read with the
  safe loader (`safe_load.load_checkpoint_file`: weights only, no code);
* `config.yaml` beside it (or `--config`): the LightningCLI config, parsed with
  `yaml.safe_load` (data only, never executed).

State-dict keys (`network.` = the EoMT module):

    network.encoder.backbone.*       timm's DINOv2 ViT (cls_token, reg_token, pos_embed of the
                                     patches only, patch_embed.proj, blocks.{i}.ls1.gamma, ..., norm)
    network.encoder.pixel_mean/std   [1, 3, 1, 1] input normalisation (0..1 units, RGB)
    network.q.weight                 [num_q, D] the queries
    network.class_head.*             [num_classes + 1, D] (last row: no object)
    network.mask_head.{0,2,4}.*      the mask MLP
    network.upscale.{i}.*            ScaleBlocks (conv1, conv2, norm)
    network.attn_mask_probs          [num_blocks] the masked-attention annealing state
    criterion.empty_weight           training only (ignored)

Configuration, first found: the config file; the `.ckpt`'s `hyper_parameters` and
`datamodule_hyper_parameters` (what LightningCLI stores: the same values as data); else every
size inferred from the tensor shapes (the returned notes say so). Read from the config:
`model.init_args.network.init_args.{num_q, num_blocks, encoder.init_args.{backbone_name,
patch_size}}` and `data.init_args.{img_size, num_classes}`, with the published defaults where a
value is absent (the dataset class's img_size / num_classes, ViT's patch size 16 and backbone
`vit_large_patch14_reg4_dinov2`, EoMT's 4 query blocks). Every value is checked against the
tensor shapes.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

import torch

from algm_export.core.errors import CheckpointError, ConfigError
from algm_export.models.formats import Format, register_format

BIN = "pytorch_model.bin"
CONFIG = "config.yaml"
NETWORK = "network."
BACKBONE_KEY = "network.encoder.backbone."
IGNORED = ("criterion.",)

# The published dataset classes' defaults (img_size, num_classes) and the task each trains.
DATASETS: dict[str, tuple[int, int, str]] = {
    "ADE20KSemantic": (512, 150, "semantic"),
    "CityscapesSemantic": (1024, 19, "semantic"),
    "COCOPanoptic": (640, 133, "panoptic"),
    "ADE20KPanoptic": (640, 150, "panoptic"),
    "COCOInstance": (640, 80, "instance"),
}
DEFAULT_BACKBONE = "vit_large_patch14_reg4_dinov2"   # models.vit.ViT's default
DEFAULT_PATCH = 16                                   # models.vit.ViT's default
DEFAULT_NUM_BLOCKS = 4                               # models.eomt.EoMT's default


@dataclass
class EomtSpec:
    """What a model needs, from the config or the tensors; `source` says where each came from."""

    backbone_name: str
    patch_size: int
    img_size: tuple[int, int]
    num_classes: int
    num_q: int
    num_blocks: int
    task: str = "semantic"
    model_class: str = ""
    data_class: str = ""
    config_source: str = "config"
    notes: list = field(default_factory=list)


# ----------------------------------------------------------------------------- files

def find_files(p: Path, config: Optional[Path]) -> tuple[Path, Optional[Path]]:
    """(checkpoint file, config file or None) for a file or folder and an optional --config."""
    if p.is_dir():
        ckpts = sorted(p.glob("*.ckpt"))
        if (p / BIN).is_file():
            ckpt = p / BIN
        elif len(ckpts) == 1:
            ckpt = ckpts[0]
        else:
            raise CheckpointError(
                f"{p} holds no {BIN} and {len(ckpts)} .ckpt files ({[q.name for q in ckpts][:5]}); pass the "
                "checkpoint file itself")
    else:
        ckpt = p
    if config is not None:
        return ckpt, config
    folder = ckpt.parent
    if (folder / CONFIG).is_file():
        return ckpt, folder / CONFIG
    yamls = sorted(q for q in folder.iterdir() if q.suffix in (".yaml", ".yml") and q.is_file())
    if len(yamls) == 1:
        return ckpt, yamls[0]
    if len(yamls) > 1:
        raise CheckpointError(f"{folder} holds several YAML files ({[q.name for q in yamls][:5]}) and no {CONFIG}; "
                              "name the training config with --config CONFIG.yaml")
    return ckpt, None


def _stamp(q: Path) -> tuple:
    st = q.stat()
    return (str(q.resolve()), st.st_mtime_ns, st.st_size)


_CACHE: dict = {}    # the last checkpoint read: recognising the format and loading read a file once


def _read(path: Path, trust: bool = False) -> tuple[Optional[dict], dict]:
    """(state dict or None when the file holds none, Lightning hyper-parameters as config-shaped data or {})."""
    from algm_export.models.formats.safe_load import load_checkpoint_file

    key = (_stamp(path), trust) if path.is_file() else None
    if key is not None and key in _CACHE:
        return _CACHE[key]
    obj = load_checkpoint_file(path, trust=trust)
    hparams: dict = {}
    sd = None
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        sd = obj["state_dict"]
        hp, dhp = obj.get("hyper_parameters"), obj.get("datamodule_hyper_parameters")
        if isinstance(hp, Mapping) and isinstance(hp.get("network"), Mapping):
            hparams = {"model": {"class_path": hp.get("_class_path", ""), "init_args": dict(hp)}}
            if isinstance(dhp, Mapping):
                hparams["data"] = {"class_path": dhp.get("_class_path", ""), "init_args": dict(dhp)}
    elif isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        sd = obj
    out = None if sd is None else {str(k): v for k, v in sd.items()}
    _CACHE.clear()                       # one entry: a checkpoint can be large
    _CACHE[key] = (out, hparams)
    return out, hparams


def forget_read() -> None:
    """Drop the cached checkpoint: a model about to take its tensors as its own weights (no copy)
    must be the only holder, or a later load would get tensors that model has changed, and the
    weights would outlive the model."""
    _CACHE.clear()


def read_checkpoint(path: Path, trust: bool = False) -> tuple[dict, dict]:
    """(state dict, Lightning hyper-parameters as config-shaped data or {}); CheckpointError when
    the file is not an EoMT checkpoint."""
    sd, hparams = _read(Path(path), trust)
    if sd is None:
        raise CheckpointError(f"{path} holds no state dict; expected the published training's {BIN} (a state dict) "
                              "or a Lightning .ckpt with 'state_dict'")
    for k, v in sd.items():
        if not isinstance(v, torch.Tensor):
            raise CheckpointError(f"{path}: state_dict entry {k!r} is not a tensor")
    if "network.q.weight" not in sd:
        raise CheckpointError(f"{path} is not an EoMT checkpoint: it has no network.q.weight (keys: "
                              f"{sorted(sd)[:5]}...); expected the published training's {BIN} or .ckpt")
    return sd, hparams


def _is_eomt_config(path: Path) -> bool:
    try:
        cfg = read_config(path)
    except ConfigError:
        return False
    return _short(_get(cfg, "model", "init_args", "network", "class_path")) == "EoMT"


CHECKPOINT_SUFFIXES = (".bin", ".ckpt", ".pth", ".pt")


def find(p: Path, config: Optional[Path] = None, trust: bool = False) -> Optional[dict]:
    """{"checkpoint", "config"} when `p` (a file or folder) holds an EoMT checkpoint: with a YAML config
    named, or with a LightningCLI config beside it whose network is EoMT, or (no such config) a
    state dict with EoMT's keys (`network.q.weight`; "config" None then); else None. The checkpoints
    of the other formats (a `variant.yml` or a config `.py` beside them) stay unread here."""
    if config is not None and config.suffix not in (".yaml", ".yml"):
        return None
    if p.is_dir():
        if config is None and ((p / "variant.yml").is_file() or any(p.glob("*.py"))):
            return None
        if not (p / BIN).is_file() and not any(p.glob("*.ckpt")):
            if config is None:
                return None
        ckpt, cfg_path = find_files(p, config)
    else:
        if p.suffix not in CHECKPOINT_SUFFIXES:
            return None
        if config is None and ((p.parent / "variant.yml").is_file() or any(p.parent.glob("*.py"))):
            return None
        ckpt, cfg_path = find_files(p, config)
    if config is not None:
        return {"checkpoint": ckpt, "config": config}
    if cfg_path is not None and _is_eomt_config(cfg_path):
        return {"checkpoint": ckpt, "config": cfg_path}
    sd, _ = _read(ckpt, trust)
    if sd is None or "network.q.weight" not in sd:
        return None
    return {"checkpoint": ckpt, "config": cfg_path}      # a config beside is used: a broken one is reported at load


def read_config(path: Path) -> dict:
    """The LightningCLI config, as data (`yaml.safe_load`)."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read config {path}: {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config {path} is not valid YAML: {' '.join(str(e).split())[:300]}") from None
    if not isinstance(data, Mapping):
        raise ConfigError(f"config {path} is not a LightningCLI config (a mapping with model: and data:)")
    return dict(data)


# ----------------------------------------------------------------------------- config -> spec

def _get(d: Any, *path: str) -> Any:
    for k in path:
        if not isinstance(d, Mapping) or k not in d:
            return None
        d = d[k]
    return d


def _int(v, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or int(v) != v or v <= 0:
        raise ConfigError(f"config {what} must be a positive integer, got {v!r}")
    return int(v)


def _size(v, what: str) -> tuple[int, int]:
    if isinstance(v, (list, tuple)):
        if len(v) != 2:
            raise ConfigError(f"config {what} must be one number or two (H, W), got {v!r}")
        return (_int(v[0], what), _int(v[1], what))
    s = _int(v, what)
    return (s, s)


def _short(class_path) -> str:
    return str(class_path or "").rsplit(".", 1)[-1]


def spec_from_config(cfg: Mapping, where: str) -> dict:
    """The values a config gives (absent ones: None), with the published defaults applied."""
    net = _get(cfg, "model", "init_args", "network")
    if not isinstance(net, Mapping):
        raise ConfigError(f"{where} has no model.init_args.network (the EoMT network); is this an EoMT training config?")
    net_cls = _short(net.get("class_path"))
    if net_cls and net_cls != "EoMT":
        raise ConfigError(f"{where}: the network is {net.get('class_path')!r}, not models.eomt.EoMT")
    nargs = net.get("init_args") or {}
    enc = _get(nargs, "encoder", "init_args") or {}
    name = enc.get("backbone_name", DEFAULT_BACKBONE)
    if not isinstance(name, str):
        raise ConfigError(f"{where}: encoder backbone_name must be a string, got {name!r}")
    if "/" in name:
        raise ConfigError(f"{where}: backbone {name!r} is a Hugging Face transformers model (DINOv3); the eomt family "
                          "builds timm DINOv2 backbones (vit_*_patch14[_reg4]_dinov2) only")
    data_cls = _short(_get(cfg, "data", "class_path"))
    dargs = _get(cfg, "data", "init_args") or {}
    margs = _get(cfg, "model", "init_args") or {}
    defaults = DATASETS.get(data_cls)
    img = dargs.get("img_size", margs.get("img_size", nargs.get("img_size", enc.get("img_size"))))
    ncls = dargs.get("num_classes", margs.get("num_classes", nargs.get("num_classes")))
    notes = []
    if img is None and defaults:
        img = defaults[0]
        notes.append(f"img_size {defaults[0]} (the default of {data_cls})")
    if ncls is None and defaults:
        ncls = defaults[1]
        notes.append(f"num_classes {defaults[1]} (the default of {data_cls})")
    model_cls = _short(_get(cfg, "model", "class_path"))
    task = {"MaskClassificationSemantic": "semantic", "MaskClassificationPanoptic": "panoptic",
            "MaskClassificationInstance": "instance"}.get(model_cls) or (defaults[2] if defaults else "semantic")
    return dict(
        backbone_name=name,
        patch_size=_int(enc.get("patch_size", DEFAULT_PATCH), "encoder patch_size"),
        img_size=None if img is None else _size(img, "img_size"),
        num_classes=None if ncls is None else _int(ncls, "num_classes"),
        num_q=None if nargs.get("num_q") is None else _int(nargs["num_q"], "num_q"),
        num_blocks=_int(nargs.get("num_blocks", DEFAULT_NUM_BLOCKS), "num_blocks"),
        task=task, model_class=str(_get(cfg, "model", "class_path") or ""),
        data_class=str(_get(cfg, "data", "class_path") or ""), notes=notes,
    )


# ----------------------------------------------------------------------------- tensors -> spec

_BLOCK = re.compile(r"^network\.encoder\.backbone\.blocks\.(\d+)\.")
# DINOv2 widths -> the timm size names (heads cannot be read from the tensors)
WIDTHS = {384: "small", 768: "base", 1024: "large", 1536: "giant"}


def shape_facts(sd: Mapping[str, torch.Tensor]) -> dict:
    """What the tensors say: width, depth, patch, registers, grid tokens, queries, classes, query blocks."""
    def need(k):
        if k not in sd:
            raise CheckpointError(f"the checkpoint has no {k}; an EoMT checkpoint has network.encoder.backbone.* "
                                  "(timm DINOv2), network.q / class_head / mask_head / upscale")
        return sd[k]

    q = need("network.q.weight")
    proj = need(BACKBONE_KEY + "patch_embed.proj.weight")
    pos = need(BACKBONE_KEY + "pos_embed")
    cls_rows = need("network.class_head.weight").shape[0]
    depth = 1 + max((int(m.group(1)) for k in sd for m in [_BLOCK.match(k)] if m), default=-1)
    reg = sd.get(BACKBONE_KEY + "reg_token")
    probs = sd.get("network.attn_mask_probs")
    return dict(
        embed_dim=int(q.shape[1]), num_q=int(q.shape[0]), num_classes=int(cls_rows) - 1, depth=depth,
        patch_size=int(proj.shape[-1]), patch_hw=tuple(int(v) for v in proj.shape[-2:]),
        num_reg=0 if reg is None else int(reg.shape[1]), pos_tokens=int(pos.shape[1]),
        num_blocks=None if probs is None else int(probs.numel()),
        attn_mask_probs=None if probs is None else [float(v) for v in probs.flatten()],
        fc1_rows=int(sd[BACKBONE_KEY + "blocks.0.mlp.fc1.weight"].shape[0])
        if BACKBONE_KEY + "blocks.0.mlp.fc1.weight" in sd else None,
    )


def backbone_from_shapes(f: Mapping) -> str:
    size = WIDTHS.get(f["embed_dim"])
    if size is None:
        raise CheckpointError(f"embedding width {f['embed_dim']} is not a DINOv2 size ({sorted(WIDTHS)}); give the "
                              "training config (config.yaml) so the backbone is named")
    if f["num_reg"] not in (0, 4):
        raise CheckpointError(f"{f['num_reg']} register tokens: timm's DINOv2 backbones have 0 or 4")
    return f"vit_{size}_patch14_{'reg4_' if f['num_reg'] else ''}dinov2"


def spec_from_shapes(f: Mapping) -> dict:
    """Every size from the tensors (a square grid is assumed: the pos_embed holds N tokens)."""
    name = backbone_from_shapes(f)
    n = f["pos_tokens"] - (0 if f["num_reg"] else 1)      # reg4 models: no_embed_class (patches only)
    side = int(round(math.sqrt(n)))
    if side * side != n:
        raise CheckpointError(f"the position embedding holds {n} patch positions, not a square grid; give the training "
                              "config (config.yaml) with img_size")
    img = side * f["patch_size"]
    return dict(backbone_name=name, patch_size=f["patch_size"], img_size=(img, img), num_classes=f["num_classes"],
                num_q=f["num_q"], num_blocks=f["num_blocks"] or DEFAULT_NUM_BLOCKS, task="semantic",
                model_class="", data_class="", notes=[])


def make_spec(sd: Mapping[str, torch.Tensor], cfg: Optional[Mapping], source: str, where: str) -> EomtSpec:
    """The model spec: the config's values checked against the tensors, the tensors' where absent."""
    from algm_export.models.backbones.dinov2 import DINOV2_MODELS

    f = shape_facts(sd)
    shapes = spec_from_shapes(f) if f["embed_dim"] in WIDTHS and f["num_reg"] in (0, 4) else None
    if cfg is None:
        if shapes is None:
            backbone_from_shapes(f)          # raises the reason
        s = shapes
        s["notes"] = [f"no config: every size inferred from the tensor shapes ({s['backbone_name']}, patch "
                      f"{s['patch_size']}, {s['img_size'][0]}x{s['img_size'][1]}, {s['num_classes']} classes, "
                      f"{s['num_q']} queries, {s['num_blocks']} query blocks)"]
        source = "tensor shapes"
    else:
        s = spec_from_config(cfg, where)
        inferred = []
        for k in ("img_size", "num_classes", "num_q"):
            if s[k] is None:
                if shapes is None:
                    raise ConfigError(f"{where} gives no {k} and the tensors cannot tell it")
                s[k] = shapes[k]
                inferred.append(k)
        if inferred:
            s["notes"].append(f"{', '.join(inferred)} not in the config: inferred from the tensor shapes")
    name = s["backbone_name"]
    if name not in DINOV2_MODELS:
        raise ConfigError(f"{where}: backbone {name!r} is not a timm DINOv2 model this family builds; "
                          f"use one of {sorted(DINOV2_MODELS)}")
    arch = DINOV2_MODELS[name]
    problems = []
    p = s["patch_size"]
    grid = (s["img_size"][0] // p, s["img_size"][1] // p)
    pos_want = grid[0] * grid[1] + (0 if arch.get("no_embed_class") else 1)
    checks = [("backbone width", arch["embed_dim"], f["embed_dim"]),
              ("depth", arch["depth"], f["depth"]),
              ("patch size", (p, p), f["patch_hw"]),
              ("register tokens", arch.get("reg_tokens", 0), f["num_reg"]),
              ("position embedding tokens (img_size / patch size)", pos_want, f["pos_tokens"]),
              ("num_classes + 1 class-head rows", s["num_classes"] + 1, f["num_classes"] + 1),
              ("num_q", s["num_q"], f["num_q"])]
    if f["num_blocks"] is not None:
        checks.append(("num_blocks (network.attn_mask_probs entries)", s["num_blocks"], f["num_blocks"]))
    for what, want, got in checks:
        if want != got:
            problems.append(f"{what}: config {want}, checkpoint {got}")
    if problems:
        raise CheckpointError(f"{where} does not match the checkpoint ({'; '.join(problems)}); pass the config this "
                              "checkpoint was trained with, or leave it out to infer every size from the tensors")
    if s["img_size"][0] % p or s["img_size"][1] % p:
        raise ConfigError(f"img_size {list(s['img_size'])} is not a multiple of the patch size {p}")
    if not 1 <= s["num_blocks"] <= f["depth"]:
        raise ConfigError(f"num_blocks {s['num_blocks']} is outside 1..{f['depth']} (the encoder's blocks)")
    return EomtSpec(backbone_name=name, patch_size=p, img_size=tuple(s["img_size"]), num_classes=s["num_classes"],
                    num_q=s["num_q"], num_blocks=s["num_blocks"], task=s["task"], model_class=s["model_class"],
                    data_class=s["data_class"], config_source=source, notes=list(s["notes"]))


# ----------------------------------------------------------------------------- key maps

_HEAD = ("q.", "class_head.", "mask_head.", "upscale.")
DERIVED = ("network.encoder.pixel_mean", "network.encoder.pixel_std", "network.attn_mask_probs")


def to_ours(sd: Mapping[str, torch.Tensor]) -> tuple[dict, dict, list]:
    """Published names -> ours (`backbone.*`, `decoder.*`). Returns (mapped, {ours: published}, ignored)."""
    out, origin, ignored = {}, {}, []
    for k, v in sd.items():
        if k.startswith(IGNORED) or k in DERIVED:
            if k.startswith(IGNORED):
                ignored.append(k)
            continue
        new = k
        if k.startswith(BACKBONE_KEY):
            new = "backbone." + k[len(BACKBONE_KEY):]
        elif k.startswith(NETWORK) and k[len(NETWORK):].startswith(_HEAD):
            new = "decoder." + k[len(NETWORK):]
        out[new] = v
        origin[new] = k
    return out, origin, sorted(ignored)


def published_name(k: str) -> str:
    """Our key -> its published name (the inverse of `to_ours` for our keys)."""
    if k.startswith("backbone."):
        return BACKBONE_KEY + k[len("backbone."):]
    if k.startswith("decoder."):
        return NETWORK + k[len("decoder."):]
    return k


def to_published(sd: Mapping[str, torch.Tensor]) -> dict:
    """Ours -> published names (the inverse of `to_ours` for our keys)."""
    return {published_name(k): v for k, v in sd.items()}


def normalization_of(sd: Mapping[str, torch.Tensor], where: str) -> dict:
    """{"mean", "std"} in 0..1 RGB from network.encoder.pixel_mean / pixel_std."""
    out = {}
    for k in ("mean", "std"):
        t = sd.get(f"network.encoder.pixel_{k}")
        if t is None:
            raise CheckpointError(f"{where} has no network.encoder.pixel_{k} (the input normalisation)")
        if t.numel() != 3 or not torch.isfinite(t).all():
            raise CheckpointError(f"{where}: network.encoder.pixel_{k} must hold 3 finite values, got {tuple(t.shape)}")
        out[k] = tuple(float(v) for v in t.flatten())
    if min(out["std"]) <= 0:
        raise CheckpointError(f"{where}: network.encoder.pixel_std {list(out['std'])} must be positive")
    return out


# ----------------------------------------------------------------------------- writing

def lightning_config(spec: EomtSpec, model_class: str = "training.mask_classification_semantic.MaskClassificationSemantic",
                     data_class: str = "datasets.ade20k_semantic.ADE20KSemantic") -> dict:
    """A LightningCLI config of this model, in the published configs' layout."""
    img = list(spec.img_size)
    encoder = {"class_path": "models.vit.ViT",
               "init_args": {"img_size": img, "patch_size": spec.patch_size, "backbone_name": spec.backbone_name,
                             "ckpt_path": None}}
    network = {"class_path": "models.eomt.EoMT",
               "init_args": {"encoder": encoder, "num_classes": spec.num_classes, "num_q": spec.num_q,
                             "num_blocks": spec.num_blocks, "masked_attn_enabled": True}}
    return {
        "seed_everything": 0,
        "model": {"class_path": model_class,
                  "init_args": {"network": network, "img_size": img, "num_classes": spec.num_classes,
                                "attn_mask_annealing_enabled": True}},
        "data": {"class_path": data_class,
                 "init_args": {"path": "data", "img_size": img, "num_classes": spec.num_classes}},
    }


FORMAT = register_format(Format(
    name="eomt-lightning",
    describe=f"an EoMT checkpoint as its training writes it ({BIN} or a Lightning .ckpt with state_dict) with its "
             f"LightningCLI {CONFIG} (beside it or --config CONFIG.yaml; without one every size is read from the "
             "tensors), or a folder holding them",
    find=find,
))


__all__ = ["BIN", "CONFIG", "DATASETS", "EomtSpec", "find", "find_files", "lightning_config", "make_spec",
           "normalization_of", "read_checkpoint", "read_config", "shape_facts", "to_ours", "to_published"]
