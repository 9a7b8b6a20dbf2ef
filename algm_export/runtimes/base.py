"""The one runner interface every runtime implements.

    with make_runner("onnxruntime", entry, precision="fp32") as r:   # runtimes.registry
        out = r.infer(image)          # numpy or torch [B, 3, H, W] float32
        out.logits                    # np.ndarray float32 [B, n_cls, H, W]
        out.merge_stats               # np.ndarray int [B, steps, 2] (merges, forced) or None (baseline)
        out.tokens                    # np.ndarray int [B, steps] patch tokens after each step, or None
        out.assignments               # list per step of np.ndarray int [B, N] (patch -> token), or None:
                                      # only runners asked for them (the torch runner, `assignments=True`;
                                      # the ONNX Runtime runner, `decisions=True`)
        out.merge_inputs              # list per step of {"x": [B, T, D], "size": [B, T] or None}: the tokens
                                      # entering each merge step (same runners, `merge_inputs` / `decisions`)

A runtime that reports merge statistics but not token counts (ONNX Runtime, TensorRT) derives
the tokens from them (`tokens_from_merge_stats`): the CLAP step removes merges*(k-1) patches
(k patches per window), every GBM step removes one per merge.

`infer(image, threshold=None)`: `threshold` is for graphs that take the CLAP threshold as an
input (dynamic token mode, `export --threshold-input`; and the torch runner of such an entry),
where it is required; runners with the threshold built in refuse a value.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Optional

import numpy as np

from algm_export.core.errors import ArtifactError, ConfigError, InputError

BACKENDS = ("torch", "onnxruntime", "tensorrt", "tensorrt-rtx")
ALIASES = {"ort": "onnxruntime", "trt": "tensorrt", "tensorrt_rtx": "tensorrt-rtx", "rtx": "tensorrt-rtx",
           "trt-rtx": "tensorrt-rtx"}


#: not a runner of a folder entry but the folder served by Triton, measured from clients (`bench --backend
#: triton`, runtimes/triton/); accepted where a caller asks for it (`normalize_backend(..., served=True)`)
SERVED = ("triton",)


def normalize_backend(name: str, served: bool = False) -> str:
    """The canonical name of a backend (aliases resolved, any case); ConfigError for an unknown one.
    `served`: also `triton` (SERVED)."""
    key = str(name).strip().lower()
    key = ALIASES.get(key, key)
    names = BACKENDS + (SERVED if served else ())
    if key not in names:
        raise ConfigError(f"unknown backend {name!r}; use one of {', '.join(names)} "
                          f"(aliases: {', '.join(f'{a}={b}' for a, b in ALIASES.items())})")
    return key


@dataclass
class RunOutput:
    logits: Optional[np.ndarray]
    merge_stats: Optional[np.ndarray] = None
    tokens: Optional[np.ndarray] = None
    assignments: Optional[list] = None
    merge_inputs: Optional[list] = None
    #: per-pixel classes [B, H, W] where the backend answers them instead of the logits (a Triton
    #: client that asked the served model for `labels` only); logits is None then
    labels: Optional[np.ndarray] = None

    # read-only mapping access (`out["logits"]`, `"merge_stats" in out`) over the fields that are set
    def keys(self):
        return [f.name for f in fields(self) if getattr(self, f.name) is not None]

    def __getitem__(self, key: str):
        if key not in self.keys():
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self):
        return iter(self.keys())

    def __contains__(self, key: object) -> bool:
        return key in self.keys()

    def get(self, key: str, default: Any = None):
        return getattr(self, key) if key in self.keys() else default

    def items(self):
        return [(k, getattr(self, k)) for k in self.keys()]


def join_outputs(parts: list) -> RunOutput:
    """The RunOutputs of consecutive slices of one batch as one: arrays joined along the batch; the
    per-step merge inputs padded on their token axis to the longest slice (padding slots: zero
    tokens of size 0, as a batch's own padding)."""
    def cat(arrays):
        return None if arrays[0] is None else np.concatenate(arrays, axis=0)

    def cat_tokens(arrays):
        if arrays[0] is None:
            return None
        T = max(a.shape[1] for a in arrays)
        return np.concatenate([np.pad(a, [(0, 0), (0, T - a.shape[1])] + [(0, 0)] * (a.ndim - 2))
                               for a in arrays], axis=0)

    first = parts[0]
    out = RunOutput(*(cat([getattr(p, k) for p in parts]) for k in ("logits", "merge_stats", "tokens")))
    out.labels = cat([p.labels for p in parts])
    if first.assignments is not None:
        out.assignments = [cat([p.assignments[s] for p in parts]) for s in range(len(first.assignments))]
    if first.merge_inputs is not None:
        out.merge_inputs = [{k: cat_tokens([p.merge_inputs[s][k] for p in parts]) for k in first.merge_inputs[s]}
                            for s in range(len(first.merge_inputs))]
    return out


def label_dtype(n_cls: int) -> type:
    """The integer type of per-pixel classes: uint8 up to 256 classes, int32 above (what `validate`
    saves and `serve` answers)."""
    return np.uint8 if int(n_cls) <= 256 else np.int32


def tokens_from_merge_stats(merge_stats: np.ndarray, n_patches: int, window: int) -> np.ndarray:
    """Patch tokens after each step [B, steps] from merge_stats [B, steps, 2]: step 0 is CLAP
    (each merge folds a window of `window` patches into one), later steps are GBM (one per merge)."""
    merges = np.asarray(merge_stats)[..., 0].astype(np.int64)
    removed = merges.copy()
    removed[:, 0] *= max(int(window) - 1, 0)
    return n_patches - np.cumsum(removed, axis=1)


class Runner:
    """Base class: subclasses set `name`, `backend` and implement `_infer(image) -> RunOutput`."""

    name: str = "runner"
    backend: str = "?"
    #: (H, W) of the images the runtime takes, None where not fixed or not known
    input_size: Optional[tuple] = None
    #: set by the registry for runtimes without a token count: (n_patches, CLAP window area)
    token_geometry: Optional[tuple] = None

    #: the graph takes the CLAP threshold as an input (dynamic token mode, `--threshold-input`)
    takes_threshold: bool = False
    #: the export folder entry (`artifacts.Entry`) the runner runs, where known
    entry = None
    #: the most images one run takes (a graph exported for one image, `export --batch 1`; an engine's
    #: profile), None: any. `infer` runs a larger batch in slices of this size and joins the outputs.
    max_batch: Optional[int] = None

    def infer(self, image, threshold=None) -> RunOutput:
        """`threshold`: a float for the batch or one per image, for graphs that take it (required
        there, refused elsewhere)."""
        if threshold is not None and not self.takes_threshold:
            raise ConfigError(f"{self.name}: its threshold is built in (the graph takes no threshold input); "
                              "export with --token-mode dynamic --threshold-input to choose it at run time")
        n, B = self.max_batch, int(image.shape[0])
        if n and B > n:
            # checked on the whole batch first, so that messages name the batch's images, not a slice's
            from algm_export.merging.driver import check_finite_array

            check_finite_array(image.detach().cpu().numpy() if hasattr(image, "detach") else image)
            size = None if threshold is None else np.asarray(
                threshold.detach().cpu() if hasattr(threshold, "detach") else threshold).size
            if size not in (None, 1, B):
                raise InputError(f"{size} thresholds for {B} images: give one value, or one per image")
            per_image = size == B            # (B > n >= 1: one per image, not one for all)
            out = join_outputs([self._run(image[i:i + n], threshold[i:i + n] if per_image else threshold)
                                for i in range(0, B, n)])
        else:
            out = self._run(image, threshold)
        if out.tokens is None and out.merge_stats is not None and self.token_geometry is not None:
            out.tokens = tokens_from_merge_stats(out.merge_stats, *self.token_geometry)
        return out

    def _run(self, image, threshold) -> RunOutput:
        return self._infer(image) if not self.takes_threshold else self._infer(image, threshold)

    def _infer(self, image, threshold=None) -> RunOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def check_input_size(runner, size, name: str):
    """`runner` if the images it takes are `size` (H, W) as far as it declares a size; else ArtifactError."""
    have = getattr(runner, "input_size", None)
    if have and all(h is not None for h in have) and tuple(have) != tuple(size):
        raise ArtifactError(f"{name}: the exported model takes {have[0]}x{have[1]} images but the manifest's model "
                            f"runs at {size[0]}x{size[1]} (model.image_size); re-export the folder")
    return runner
