"""The EoMT family: a DINOv2 ViT whose last blocks also carry learned queries (EoMT, CVPR 2025).

Model: `backbones/dinov2.py` (timm's DINOv2 ViT, cls + 4 register tokens) and
`decoders/eomt.py` (`EomtHead`: class head, mask MLP, ScaleBlock upscaler), assembled into
`Eomt(SegModel)`. The `num_q` queries (`decoder.q`) are put in front of the tokens before block
`depth - num_blocks` (`enter_block`: they join the prefix, `[queries, cls, registers,
patches]`, as the published code orders them) and run through the last `num_blocks` blocks with
the rest; after the final norm the head reads the queries and the patch tokens.

Inference as the published semantic evaluation (`training/mask_classification_semantic.py`):
masked attention off (as the published evaluation runs it once the annealing has ended; a
checkpoint whose `attn_mask_probs` are not all 0 stopped mid-annealing: a warning says so), per
pixel `sigmoid(mask logits resized to the input) . softmax(class logits)[:-1]` summed over the
queries (`forward`, at the model's input size); other image sizes by the published windowing
(`inference`: the short side scaled to the model size, square crops along the long side with
the overlap spread evenly, scores averaged and resized back).

With ALGM, merge layers must lie before the first query block (CLAP / GBM see cls + registers
as P = 5 prefix tokens); the queries then attend over the merged tokens with padding masked,
and the head reads the patch tokens unmerged to the grid with the assignment map valid at the
end of the encoder (`Level.as_map`).

Checkpoints: `models/formats/eomt.py` (`pytorch_model.bin` or a Lightning `.ckpt`, with the
LightningCLI `config.yaml`). Input: `normalization` = the checkpoint's `pixel_mean` / `pixel_std`
(0..1 units, RGB).
"""

from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from algm_export.core.errors import CheckpointError, ConfigError
from algm_export.models.backbones.dinov2 import DINOV2_MODELS, dinov2_backbone
from algm_export.models.backbones.timm_vit import TimmViT
from algm_export.models.base import SegModel, TokenState, build_with_weights
from algm_export.models.checkpoint_keys import load_checked
from algm_export.models.decoders.eomt import EomtHead, semantic_logits
from algm_export.models.formats import eomt as fmt
from algm_export.models.registry import Family, register

FAMILY = "eomt"
IMAGENET = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}   # models.vit.ViT's pixel_mean / std
UPSTREAM_SUFFIX = "_upstream_init"


class AttnMaskAnnealingWarning(UserWarning):
    """The checkpoint's masked-attention annealing had not ended (some attn_mask_probs > 0)."""


# ----------------------------------------------------------------------------- configuration

@dataclass
class EomtConfig:
    """The uniform family fields plus EoMT's. `image_size` is the run size (the published img_size by default)."""

    n_cls: int
    image_size: tuple[int, int]
    patch_size: int
    n_layers: int
    d_model: int
    n_heads: int
    num_q: int
    num_blocks: int
    normalization: dict
    backbone: str                          # a label: timm name (+ patch size / img size)
    timm_model: str = "vit_small_patch14_reg4_dinov2"
    built_image_size: tuple[int, int] = (512, 512)
    decoder_name: str = "eomt"
    inference: dict = field(default_factory=dict)   # the published windowing: {"mode": "eomt_windows", "window_size"}
    attn_mask_probs: list = field(default_factory=list)
    task: str = "semantic"
    model_class: str = ""
    data_class: str = ""
    config_source: str = "built-in"
    algm: Optional[dict] = None
    notes: list = field(default_factory=list)
    family: str = FAMILY

    @property
    def grid(self) -> tuple[int, int]:
        p = self.patch_size
        return (self.image_size[0] // p, self.image_size[1] // p)

    @property
    def num_prefix(self) -> int:
        """Prefix tokens of the backbone (cls + registers); the queries join them in the query blocks."""
        return 1 + int(DINOV2_MODELS[self.timm_model].get("reg_tokens", 0))

    @property
    def first_query_block(self) -> int:
        """0-based index of the first block that carries the queries."""
        return self.n_layers - self.num_blocks

    def to_dict(self) -> dict:
        d = {k: copy.deepcopy(getattr(self, k)) for k in self.__dataclass_fields__}
        for k in ("image_size", "built_image_size"):
            d[k] = list(d[k])
        d["normalization"] = {k: list(v) for k, v in self.normalization.items()}
        d["grid"] = list(self.grid)
        d["num_prefix"] = self.num_prefix
        return d

    def spec(self) -> fmt.EomtSpec:
        return fmt.EomtSpec(backbone_name=self.timm_model, patch_size=self.patch_size,
                            img_size=tuple(self.built_image_size), num_classes=self.n_cls, num_q=self.num_q,
                            num_blocks=self.num_blocks, task=self.task)


def _label(name: str, patch: int, img) -> str:
    return f"{name}(patch_size={patch}, img_size={img[0] if img[0] == img[1] else list(img)})"


# ----------------------------------------------------------------------------- the model

class Eomt(SegModel):
    """DINOv2 ViT + EoMT queries and head. `forward(im)` = the published per-pixel semantic scores
    [B, n_cls, H, W] of a normalised batch at the model's input size (masked attention off)."""

    family = FAMILY

    def __init__(self, cfg: EomtConfig, backbone: TimmViT, decoder: EomtHead):
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone
        self.decoder = decoder
        self.load_report: dict = {}

    def enter_block(self, i: int, x: torch.Tensor, state: TokenState):
        if i != self.cfg.first_query_block:
            return x, state
        q = self.decoder.queries(x.shape[0], x.dtype)
        return torch.cat([q, x], dim=1), state.with_prefix(self.decoder.num_q)

    def check_setting(self, setting, grid=None) -> None:
        """ALGM merges only before the first query block: the queries join the tokens there and the
        head reads them unmerged (a merge layer L runs inside block L, 1-based)."""
        super().check_setting(setting, grid)
        first = self.cfg.first_query_block + 1            # 1-based
        late = [int(l) for l in setting.layers if int(l) >= first]
        if late:
            raise ConfigError(
                f"ALGM layer{'s' if len(late) > 1 else ''} {', '.join(map(str, late))} "
                f"{'lie' if len(late) > 1 else 'lies'} in EoMT's query blocks (the {self.cfg.num_q} "
                f"queries join the tokens at layer {first} of {self.cfg.n_layers}); merge layers must lie before "
                f"it: the last allowed layer is {first - 1} (--layers from 1 to {first - 1})")

    def added_tokens(self, i: int) -> int:
        return self.decoder.num_q if i == self.cfg.first_query_block else 0

    def finish(self, out, padded_hw, out_hw) -> torch.Tensor:
        mask_logits, class_logits = out
        if self._raw_outputs:
            return out
        return semantic_logits(mask_logits, class_logits, out_hw)

    _raw_outputs = False

    @torch.no_grad()
    def predict_masks(self, im: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(normed tokens [B, Q+P+N, D], mask logits, class logits) of the last block, no merging:
        what the published `EoMT.forward` returns last (masked attention off) and the tokens its
        head reads (the model's own loop, `forward_tokens`, with the head's outputs returned as they are)."""
        seen = []
        hook = self.backbone.norm.register_forward_hook(lambda m, i, o: seen.append(o))
        self._raw_outputs = True
        try:
            mask_logits, class_logits = self.forward_tokens(im)
        finally:
            self._raw_outputs = False
            hook.remove()
        return seen[-1], mask_logits, class_logits

    own_windows = True

    def inference(self, im: torch.Tensor, fn: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
                  batch_size: int = 4, on_batch=None) -> torch.Tensor:
        """The published semantic windowing of normalised images [B, 3, H, W] of any size -> [B, n_cls, H, W].
        `fn` maps a batch of crops at the model size to scores (default: this model; e.g. an engine)."""
        return eomt_window_inference(fn or self, im, self.cfg.image_size, batch_size=batch_size, on_batch=on_batch)

    def published_state_dict(self) -> dict:
        """The state dict under the published names, with the buffers the published module holds."""
        sd = fmt.to_published({k: v.detach().cpu() for k, v in self.state_dict().items()})
        norm = self.cfg.normalization
        sd["network.encoder.pixel_mean"] = torch.tensor(norm["mean"], dtype=torch.float32).reshape(1, 3, 1, 1)
        sd["network.encoder.pixel_std"] = torch.tensor(norm["std"], dtype=torch.float32).reshape(1, 3, 1, 1)
        probs = self.cfg.attn_mask_probs or [0.0] * self.cfg.num_blocks
        sd["network.attn_mask_probs"] = torch.tensor(probs, dtype=torch.float32)
        return sd


# ----------------------------------------------------------------------------- windowing

def eomt_windows(hw, img_size) -> dict:
    """The published `window_imgs_semantic` plan for one image of size `hw`: the scaled size
    (`round(side * max(S_h / h, S_w / w))`) and the crop starts along the long side."""
    S = (int(img_size[0]), int(img_size[1]))
    if S[0] != S[1]:
        raise ConfigError(f"the published windowing takes square crops; the model size {list(S)} is not square")
    s = S[0]
    h, w = int(hw[0]), int(hw[1])
    factor = max(S[0] / h, S[1] / w)
    scaled = (round(h * factor), round(w * factor))
    long = max(scaled)
    n = math.ceil(long / s)
    overlap = n * s - long
    per = overlap / (n - 1) if overlap > 0 else 0
    starts = [int(j * (s - per)) for j in range(n)]
    return {"scaled": scaled, "crop": s, "starts": starts, "along_h": scaled[0] > scaled[1],
            "revert_along_h": h > w}


def _resize(x: torch.Tensor, size) -> torch.Tensor:
    size = (int(size[0]), int(size[1]))
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)


@torch.no_grad()
def eomt_window_inference(fn, im: torch.Tensor, img_size, batch_size: int = 4,
                          on_batch: Optional[Callable[[list, torch.Tensor], None]] = None) -> torch.Tensor:
    """Published semantic windowing (`window_imgs_semantic` + `revert_window_logits_semantic`)
    for normalised images: each image resized (bilinear, antialiased as PIL's resize of the
    published data pipeline) to the scaled size, crops of the model size along the long side, the
    crops' scores summed and divided by the count, bilinearly resized back to the image size.
    `on_batch(anchors, crops)` is called before each call of `fn` (anchors: each crop's top-left corner)."""
    outs = []
    dt = torch.float64 if im.dtype == torch.float64 else torch.float32
    for b in range(im.shape[0]):
        x = im[b:b + 1].to(dt)
        H, W = x.shape[-2:]
        plan = eomt_windows((H, W), img_size)
        xs = _resize(x, plan["scaled"])
        s = plan["crop"]
        crops = [xs[..., a:a + s, :] if plan["along_h"] else xs[..., :, a:a + s] for a in plan["starts"]]
        scores = []
        corners = [(a, 0) if plan["along_h"] else (0, a) for a in plan["starts"]]
        for i in range(0, len(crops), batch_size):
            batch = torch.cat(crops[i:i + batch_size])
            if on_batch is not None:
                on_batch(corners[i:i + batch_size], batch)
            out = fn(batch)
            out = out[0] if isinstance(out, (tuple, list)) else out
            scores.append(torch.as_tensor(out).to(dt))
        scores = torch.cat(scores)
        sh, sw = plan["scaled"]
        total = torch.zeros((scores.shape[1], sh, sw), dtype=dt)
        count = torch.zeros((scores.shape[1], sh, sw), dtype=dt)
        for a, sc in zip(plan["starts"], scores):
            if plan["revert_along_h"]:
                total[:, a:a + s, :] += sc
                count[:, a:a + s, :] += 1
            else:
                total[:, :, a:a + s] += sc
                count[:, :, a:a + s] += 1
        outs.append(F.interpolate((total / count)[None], size=(int(H), int(W)), mode="bilinear", align_corners=False))
    return torch.cat(outs)


# ----------------------------------------------------------------------------- building

def build_eomt(spec: fmt.EomtSpec, normalization: Optional[dict] = None, attn_mask_probs=None) -> Eomt:
    """An EoMT (random weights: timm's / PyTorch's constructors, eval mode) from a spec."""
    name = spec.backbone_name
    if name not in DINOV2_MODELS:
        raise ConfigError(f"backbone {name!r} is not a timm DINOv2 model this family builds; use one of "
                          f"{sorted(DINOV2_MODELS)}")
    img = tuple(int(v) for v in spec.img_size)
    backbone = dinov2_backbone(name, img, spec.patch_size)
    arch = DINOV2_MODELS[name]
    if not 1 <= spec.num_blocks <= arch["depth"]:
        raise ConfigError(f"num_blocks {spec.num_blocks} is outside 1..{arch['depth']} (the encoder's blocks)")
    decoder = EomtHead(arch["embed_dim"], spec.num_classes, spec.num_q, spec.patch_size, arch["depth"],
                       spec.num_blocks)
    probs = [0.0] * spec.num_blocks if attn_mask_probs is None else [float(v) for v in attn_mask_probs]
    cfg = EomtConfig(
        n_cls=spec.num_classes, image_size=img, patch_size=spec.patch_size, n_layers=arch["depth"],
        d_model=arch["embed_dim"], n_heads=arch["num_heads"], num_q=spec.num_q, num_blocks=spec.num_blocks,
        normalization=dict(normalization or IMAGENET), backbone=_label(name, spec.patch_size, img), timm_model=name,
        built_image_size=img, inference={"mode": "eomt_windows", "window_size": list(img)},
        attn_mask_probs=probs, task=spec.task, model_class=spec.model_class, data_class=spec.data_class,
        config_source=spec.config_source, notes=list(spec.notes),
    )
    return Eomt(cfg, backbone, decoder).eval()


# ----------------------------------------------------------------------------- checkpoints

def load_eomt(path, config=None, image_size=None, strict: bool = True, trust_checkpoint: bool = False) -> Eomt:
    """An EoMT from a published checkpoint (file or folder) and its LightningCLI config (see `formats/eomt.py`)."""
    p = Path(path).expanduser()
    c = None if config is None else Path(config).expanduser()
    files = fmt.find(p, c, trust_checkpoint) if p.exists() else None
    if not files:
        raise CheckpointError(f"{p} holds no EoMT checkpoint; pass {fmt.BIN}, a Lightning .ckpt or their folder "
                              "(with the training's config.yaml)")
    return load_files(files, image_size=image_size, strict=strict, trust_checkpoint=trust_checkpoint)


def load_files(files: dict, image_size=None, strict: bool = True, trust_checkpoint: bool = False) -> Eomt:
    """An EoMT from the files `formats.eomt.find` found: {"checkpoint", "config" (or None)}."""
    ckpt, cfg_path = Path(files["checkpoint"]), files.get("config")
    if not ckpt.is_file():
        raise CheckpointError(f"checkpoint {ckpt} does not exist; pass {fmt.BIN}, a Lightning .ckpt or their folder")
    sd, hparams = fmt.read_checkpoint(ckpt, trust=trust_checkpoint)
    where = str(ckpt)
    if cfg_path is not None:
        cfg, source = fmt.read_config(cfg_path), str(cfg_path)
        where = str(cfg_path)
    elif hparams:
        cfg, source = hparams, f"{ckpt.name} hyper_parameters"
        where = f"{ckpt} hyper_parameters"
    else:
        cfg, source = None, "tensor shapes"
    spec = fmt.make_spec(sd, cfg, source, where)
    norm = fmt.normalization_of(sd, str(ckpt))
    probs_t = sd.get("network.attn_mask_probs")
    probs = None if probs_t is None else [float(v) for v in probs_t.flatten()]
    # the network on the meta device first (no memory, no initial weights): the checkpoint is checked
    # against it, and its tensors become the weights, so that loading holds one copy of them
    # (`base.build_with_weights`), not two
    with torch.device("meta"):
        model = build_eomt(spec, norm, probs)
    report = load_state_dict_mapped(model, sd, strict=strict, where=str(ckpt), copy=False)
    mapped = report.pop("mapped")
    del sd
    fmt.forget_read()          # the tensors become this model's weights: nothing else may hold them
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_with_weights(lambda: build_eomt(spec, norm, probs), mapped)
    model.load_report = report
    if probs is not None and any(v > 0 for v in probs):
        msg = (f"{ckpt}: network.attn_mask_probs = {probs}: the run ended mid-annealing (masked attention still on "
               "for some queries); inference runs with masked attention off, as the published evaluation does "
               "once annealing has ended, so results differ from that run's own validation")
        model.cfg.notes.append(msg)
        warnings.warn(msg, AttnMaskAnnealingWarning, stacklevel=2)
    if image_size is not None:
        model.set_image_size(image_size)
    model.source = str(ckpt)
    model.checkpoint_path = ckpt
    model.config_path = None if cfg_path is None else str(cfg_path)
    return model.eval()


def _listing(keys, n=None) -> str:
    """Keys in a load error: the first n, or all cut at 600 characters."""
    return ", ".join(keys[:n]) if n else ", ".join(keys)[:600]


def load_state_dict_mapped(model: Eomt, sd, strict: bool = True, where: str = "checkpoint",
                           copy: bool = True) -> dict:
    """Check `sd` (published names) against `model` and load it (`copy=False`: check only; the
    report's `mapped` holds the tensors under our names, the model's keys only)."""
    mapped, origin, ignored = fmt.to_ours(sd)
    missing, unexpected = load_checked(model, mapped, strict, f"{where} does not match the EoMT it describes: ",
                                       _listing, name=lambda k: origin[k] if k in origin else fmt.published_name(k),
                                       copy=copy)
    report = {"ignored": ignored, "missing": missing, "unexpected": unexpected,
              "derived": [k for k in fmt.DERIVED if k in sd], "config_source": model.cfg.config_source}
    if not copy:
        own = model.state_dict()
        report["mapped"] = {k: v for k, v in mapped.items() if k in own}
    return report


def save_eomt(model: Eomt, folder, form: str = "bin", config: Optional[dict] = None) -> Path:
    """Write the published form into `folder`: `pytorch_model.bin` (a state dict: `network.*` +
    `criterion.empty_weight`) or `eomt.ckpt` (Lightning-shaped: `state_dict`, `hyper_parameters`,
    `datamodule_hyper_parameters`, `epoch`, `global_step`), and `config.yaml` (LightningCLI).
    Returns the checkpoint path."""
    import yaml

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = config or fmt.lightning_config(model.cfg.spec())
    sd = model.published_state_dict()
    empty = torch.ones(model.cfg.n_cls + 1)
    empty[-1] = 0.1                                   # the published no_object_coefficient
    sd["criterion.empty_weight"] = empty
    (folder / fmt.CONFIG).write_text("# lightning.pytorch==2.5.1.post0\n" + yaml.safe_dump(cfg, sort_keys=False))
    if form == "bin":
        path = folder / fmt.BIN
        torch.save(sd, path)
    elif form == "ckpt":
        path = folder / "eomt.ckpt"
        m = cfg["model"]
        hp = {"_class_path": m["class_path"], **copy.deepcopy(m["init_args"])}
        d = cfg.get("data") or {}
        dhp = {"_class_path": d.get("class_path", ""), **copy.deepcopy(d.get("init_args") or {})}
        torch.save({"epoch": 0, "global_step": 0, "pytorch-lightning_version": "2.5.1.post0", "state_dict": sd,
                    "hparams_name": "kwargs", "hyper_parameters": hp, "datamodule_hparams_name": "kwargs",
                    "datamodule_hyper_parameters": dhp, "loops": {}, "callbacks": {}, "optimizer_states": [],
                    "lr_schedulers": []}, path)
    else:
        raise ConfigError(f"form {form!r}: use 'bin' (pytorch_model.bin) or 'ckpt' (Lightning)")
    return path


# ----------------------------------------------------------------------------- built-ins

SIZES = {"s": "vit_small_patch14_reg4_dinov2", "b": "vit_base_patch14_reg4_dinov2",
         "l": "vit_large_patch14_reg4_dinov2", "g": "vit_giant_patch14_reg4_dinov2"}


@torch.no_grad()
def randomize_eomt_(model: Eomt, seed: int = 0) -> Eomt:
    """Every parameter at random (seeded; `randomize_`'s draws) with layer scales U(0.5, 1.5), so
    every block adds as much as its input carries (timm's 1e-5 would make blocks near-identities)."""
    from algm_export.models.mmseg_common import randomize_

    randomize_(model, seed)
    g = torch.Generator().manual_seed(int(seed) + 7)
    for name, p in sorted(model.named_parameters()):
        if name.endswith(("ls1.gamma", "ls2.gamma")):
            p.copy_(torch.rand(p.shape, generator=g) + 0.5)
        elif name.endswith(("cls_token", "reg_token")):
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return model


def builtin_eomt(size: str = "s", image_size: int = 512, patch_size: int = 16, seed: int = 0, n_cls: int = 150,
                 num_q: int = 100, num_blocks: int = 4, init: str = "random") -> Eomt:
    """An EoMT with seeded weights (the published ADE20K semantic layout: 100 queries, 4 query
    blocks, 150 classes, ImageNet normalisation): `init="random"` every parameter drawn at random
    with layer scales that make every block count (`randomize_eomt_`); `init="upstream"` the weights
    a fresh model gets from the published code before any checkpoint (timm's ViT init, layer scale
    1e-5; PyTorch's defaults for the queries and the head)."""
    from algm_export.models import mmseg_common as mmseg

    if size not in SIZES:
        raise ConfigError(f"unknown EoMT size {size!r}; use one of {sorted(SIZES)}")
    spec = fmt.EomtSpec(backbone_name=SIZES[size], patch_size=patch_size, img_size=(image_size, image_size),
                        num_classes=n_cls, num_q=num_q, num_blocks=num_blocks, task="semantic",
                        model_class="training.mask_classification_semantic.MaskClassificationSemantic",
                        data_class="datasets.ade20k_semantic.ADE20KSemantic")
    with mmseg.seeded_construction(seed):
        model = build_eomt(spec)
    if mmseg.check_init(init) == "random":
        randomize_eomt_(model, seed)
    return model.eval()


BUILTIN_MODELS: dict[str, Callable[[], Eomt]] = {
    "eomt_s16_512": partial(builtin_eomt, "s", 512, 16, 0),
    f"eomt_s16_512{UPSTREAM_SUFFIX}": partial(builtin_eomt, "s", 512, 16, 0, init="upstream"),
    "eomt_l16_512": partial(builtin_eomt, "l", 512, 16, 0, init="upstream"),
}


# ----------------------------------------------------------------------------- registry

def load(files: dict, image_size=None, strict: bool = True, trust_checkpoint: bool = False):
    return load_files(files, image_size=image_size, strict=strict, trust_checkpoint=trust_checkpoint)


FAMILY_ENTRY = register(Family(
    name=FAMILY,
    format=fmt.FORMAT.name,
    describe="EoMT (timm DINOv2 ViT, queries in the last blocks, mask and class heads)",
    builtins=dict(BUILTIN_MODELS),
    load=load,
))
