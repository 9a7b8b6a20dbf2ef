"""Checkpoint and config formats, recognised by their content: the published Segmenter format
(`checkpoint.pth` + `variant.yml`), mmsegmentation (`.pth` + its config `.py`), and the weights-only
unpickler every format reads through (`safe_load`).
"""
