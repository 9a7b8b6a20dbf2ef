"""The published numbers of the ALGM paper (docs/algorithm.md: published numbers), shown beside ours by bench and report."""

PUBLISHED = {  # docs/algorithm.md: published numbers: ADE20K, Segmenter, batch 32 on one GPU, fvcore GMACs
    "vit_tiny_patch16_384": {"crop": 512, "base": (38.1, 287, 12.8), "algm": (38.9, 388, 8.4)},
    "vit_small_patch16_384": {"crop": 512, "base": (45.3, 134, 38.6), "algm": (46.4, 192, 26.3)},
    "vit_base_patch16_384": {"crop": 512, "base": (48.5, 51, 130), "algm": (49.4, 73, 91)},
    "vit_large_patch16_384": {"crop": 640, "base": (51.8, 10, 672), "algm": (52.7, 16, 438)},
}

