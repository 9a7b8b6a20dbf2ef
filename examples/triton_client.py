#!/usr/bin/env python
"""Segment a photo with a model served by Triton (`algm-export serve DIR`, or a `triton-repo`
repository in tritonserver) over HTTP, and write the segmentation as a PNG.

    python examples/triton_client.py photo.jpg --url 127.0.0.1:8000 --model t0.880_l1-5 --out seg.png

Needs only tritonclient[http], numpy and pillow (`pip install 'algm-export[serve]'` has them). The
photo is prepared as the exported models expect: RGB, bilinear resize to the model's input size
(align_corners=False, no antialiasing, as the published evaluation), /255, then (x - mean) / std
(`--normalization vit`: 0.5 / 0.5; `deit`: the ImageNet mean / std; or `--mean R,G,B --std R,G,B` in
0..1 units: the export folder's `model.normalization`, which `algm-export serve` prints). The input
size and the inputs come from the model's metadata; a model that takes `threshold` gets
`--threshold` (default: the server's default for it). The PNG has one colour per class, at the
photo's own size (nearest-neighbour upsampling of the class map); the class shares and, for ALGM
models, the merges per step are printed.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

NORMALIZATION = {"vit": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
                 "deit": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))}


def resize_bilinear(a: np.ndarray, h: int, w: int) -> np.ndarray:
    """float [H, W, C] -> [h, w, C], bilinear with align_corners=False and no antialiasing."""
    def axis(n_in, n_out):
        src = np.maximum((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0.0)
        i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, (src - i0)[:, None]

    y0, y1, fy = axis(a.shape[0], h)
    x0, x1, fx = axis(a.shape[1], w)
    top = a[y0][:, x0] * (1 - fx)[None] + a[y0][:, x1] * fx[None]
    bottom = a[y1][:, x0] * (1 - fx)[None] + a[y1][:, x1] * fx[None]
    return top * (1 - fy)[:, :, None] + bottom * fy[:, :, None]


def prepare(path: str, h: int, w: int, normalization="vit") -> np.ndarray:
    """The photo as the model input [1, 3, h, w] float32; `normalization`: a name or (mean, std)."""
    from PIL import Image

    img = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0
    if img.shape[:2] != (h, w):
        img = resize_bilinear(img, h, w)
    stats = NORMALIZATION[normalization] if isinstance(normalization, str) else normalization
    mean, std = (np.asarray(v, np.float32) for v in stats)
    return np.ascontiguousarray(((img - mean) / std).transpose(2, 0, 1)[None], dtype=np.float32)


def palette(n: int) -> np.ndarray:
    """n distinct colours (the PASCAL VOC bit pattern)."""
    pal = np.zeros((n, 3), np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal[i] = (r, g, b)
    return pal


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("image", help="a photo (any format pillow reads)")
    ap.add_argument("--url", default="127.0.0.1:8000", help="the server's HTTP address (default: %(default)s)")
    ap.add_argument("--model", default="baseline", help="the Triton model (default: %(default)s)")
    ap.add_argument("--normalization", choices=sorted(NORMALIZATION), default="vit",
                    help="the model's input normalisation (default: %(default)s)")
    ap.add_argument("--mean", default=None, help="R,G,B mean in 0..1 units (with --std; instead of --normalization)")
    ap.add_argument("--std", default=None, help="R,G,B standard deviation in 0..1 units (with --mean)")
    ap.add_argument("--threshold", type=float, default=None,
                    help="the CLAP threshold for a model that takes it as an input (threshold-input entries)")
    ap.add_argument("--out", default="segmentation.png", help="the PNG to write (default: %(default)s)")
    a = ap.parse_args(argv)
    norm = a.normalization
    if a.mean or a.std:
        try:
            norm = tuple(tuple(float(v) for v in t.split(",")) for t in (a.mean, a.std))
            assert all(len(t) == 3 for t in norm) and min(norm[1]) > 0
        except (AttributeError, ValueError, AssertionError):
            ap.error("--mean and --std take three comma-separated numbers each (0..1 units, std > 0)")

    import tritonclient.http as th
    from PIL import Image
    from tritonclient.utils import InferenceServerException

    client = th.InferenceServerClient(a.url)
    try:
        meta = client.get_model_metadata(a.model)
    except InferenceServerException as e:
        print(f"error: {a.url} has no model {a.model!r} ready ({e.message()}); start `algm-export serve DIR` "
              "and pass one of the models it lists with --model", file=sys.stderr)
        return 2
    inputs = {t["name"]: t for t in meta["inputs"]}
    shape = [int(d) for d in inputs["image"]["shape"]]
    h, w = shape[-2:]
    x = prepare(a.image, h, w, norm)
    req = [th.InferInput("image", list(x.shape), "FP32")]
    req[0].set_data_from_numpy(x)
    if "threshold" in inputs and a.threshold is not None:
        req.append(th.InferInput("threshold", [1, 1], "FP32"))
        req[1].set_data_from_numpy(np.array([[a.threshold]], np.float32))
    served = {t["name"]: t for t in meta["outputs"]}
    n_cls = int(served["logits"]["shape"][-3])
    # `algm-export serve` answers each pixel's class (`labels`): no logits need to travel; a model
    # of a `triton-repo` repository answers the logits, whose argmax is the same classes
    outputs = ["labels" if "labels" in served else "logits"] + [n for n in ("merge_stats",) if n in served]
    try:
        res = client.infer(a.model, req, outputs=[th.InferRequestedOutput(n) for n in outputs])
    except InferenceServerException as e:
        print(f"error: the server refused the request: {e.message()}", file=sys.stderr)
        return 2
    if "labels" in outputs:
        labels = res.as_numpy("labels")[0].astype(np.int32)  # [h, w]
    else:
        labels = res.as_numpy("logits")[0].argmax(0).astype(np.int32)
    photo = Image.open(a.image)
    seg = Image.fromarray(palette(n_cls)[labels]).resize(photo.size, Image.NEAREST)
    seg.save(a.out)
    share = np.bincount(labels.ravel(), minlength=n_cls) / labels.size
    top = ", ".join(f"class {c}: {100 * share[c]:.1f}%" for c in np.argsort(-share)[:5] if share[c] > 0)
    print(f"{a.model}: {n_cls} classes at {h}x{w}; {top}")
    if "merge_stats" in outputs:
        ms = res.as_numpy("merge_stats")[0]
        print("merges per ALGM step (merges, forced): " + ", ".join(f"({m}, {f})" for m, f in ms.tolist()))
    print(f"written: {a.out} ({seg.size[0]}x{seg.size[1]})")
    client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
