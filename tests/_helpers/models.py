"""The small model most tests use: a seeded ViT-Ti Segmenter, by default 6 blocks at 128 px (8 x 8 patches,
linear decoder, 21 classes), the same weights every time."""

from __future__ import annotations

import torch


def tiny_segmenter(size: int = 128, n_cls: int = 21, n_layers: int = 6):
    from algm_export.models.families.segmenter import Segmenter, make_config

    cfg = make_config("vit_tiny", "linear", size, n_cls)
    cfg.n_layers = n_layers
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return Segmenter(cfg).eval()
