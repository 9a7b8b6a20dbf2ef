"""A state dict loaded into a model with its key report, the one check every family's loader makes
(the mmseg families through `mmseg_common.load_state_dict_checked`, EoMT under the published names)."""

from __future__ import annotations

from typing import Callable, Mapping, Optional

import torch

from algm_export.core.errors import CheckpointError


def load_checked(model, sd: Mapping[str, torch.Tensor], strict: bool, mismatch: str,
                 listing: Callable[..., str], name: Optional[Callable[[str], str]] = None,
                 hint: str = "", copy: bool = True) -> tuple[list, list]:
    """Load `sd` (keys as the model names them) into `model`, or refuse it with a `CheckpointError`
    `mismatch + problems (+ hint)`: the shape mismatches, and, when `strict`, the missing and the
    unexpected keys; `hint` is added when no shape mismatch is among them. copy=False: the check
    only (a network on the meta device, which takes the tensors afterwards).

    listing(keys) / listing(shapes, 6): a list in the message; name(key): how a key is shown (the
    checkpoint's own name of a key the family renamed; default: as it is). Returns (missing: the
    model's keys `sd` lacks, unexpected: the keys of `sd` the model lacks, each shown by `name`)."""
    shown = name or (lambda k: k)
    own = model.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(shown(k) for k in set(sd) - set(own))
    shapes = sorted(f"{shown(k)} {tuple(sd[k].shape)} (model {tuple(own[k].shape)})"
                    for k in set(sd) & set(own) if sd[k].shape != own[k].shape)
    problems = []
    if shapes:
        problems.append(f"shape mismatches: {listing(shapes, 6)}")
    if strict and missing:
        problems.append(f"missing keys ({len(missing)}): {listing([shown(k) for k in missing])}")
    if strict and unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {listing(unexpected)}")
    if problems:
        raise CheckpointError(mismatch + "; ".join(problems) + ("" if shapes else hint))
    if copy:     # copy=False: only the check (a network on the meta device, built with the weights later)
        model.load_state_dict({k: v for k, v in sd.items() if k in own}, strict=False)
    return missing, unexpected
