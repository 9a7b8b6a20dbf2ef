"""Parity of a backend (ONNX Runtime or TensorRT) against PyTorch (`algm-export validate`).

For the baseline and every threshold setting of an export folder, on every image:
backend vs PyTorch as the entry was exported (static: same capacities; dynamic token mode:
PyTorch dynamic `per_image`): max/mean |logit difference|, argmax agreement, merge decisions
(merges and forced merges per step, compared); for static entries also the PyTorch reference
(`per_image`, no capacities) vs static (the reference parity). Dynamic entries: the token
counts of every image after every step, backend vs PyTorch, which must be equal (an image
that differs is a docs/algorithm.md: numerical sensitivity near-tie; more than `Limits.token_mismatch_images` fail), and never
a forced merge. A threshold-input entry is validated at each of its thresholds (the manifest's
`thresholds`, or `thresholds=`), one report row per (entry, threshold). Over all images: the
parity mIoU (backend predictions scored against PyTorch's). With `labels`, the real mIoU of
PyTorch and of the backend with the published sliding-window inference.

Parity is statistical (docs/algorithm.md: numerical sensitivity): near-ties may flip a few merge decisions; the report counts
them. Limits (fp32 defaults): mean argmax agreement >= 99.9 %, every image >= 99 %, parity
mIoU >= 99.5. Outputs are saved as polygraphy RunResults (`polygraphy run --load-outputs`):
per image the labels, the logits at one pixel per patch, and the merge statistics.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from algm_export.artifacts import ExportFolder, locks_export_folder
from algm_export.core.errors import ConfigError
from algm_export.core.progress import progress_bar, release_memory, stage


@dataclass
class Limits:
    mean_agreement: float = 99.9     # percent of pixels, averaged over images
    min_agreement: float = 99.0      # percent of pixels, every image
    parity_miou: float = 99.5        # percent
    #: dynamic entries: images whose token counts may differ from PyTorch's (docs/algorithm.md: numerical sensitivity: an occasional
    #: near-tie, never a systematic difference); None: one image, or 1 % of them when that is more
    token_mismatch_images: Optional[int] = None

    def token_mismatches_allowed(self, n_images: int) -> int:
        if self.token_mismatch_images is not None:
            return int(self.token_mismatch_images)
        return max(1, n_images // 100)

    @classmethod
    def for_precision(cls, precision: str) -> "Limits":
        # float16 activations move logits by ~1e-3: argmax flips on near-equal classes are expected
        return cls() if precision == "fp32" else cls(99.0, 95.0, 97.0)


def confusion(pred: np.ndarray, gt: np.ndarray, n: int, ignore: Optional[int] = None) -> np.ndarray:
    p, g = pred.reshape(-1).astype(np.int64), gt.reshape(-1).astype(np.int64)
    if ignore is not None:
        keep = g != ignore
        p, g = p[keep], g[keep]
    return np.bincount(g * n + p, minlength=n * n).reshape(n, n)


def miou(conf: np.ndarray) -> float:
    """Mean IoU (%) over the classes present in prediction or ground truth."""
    inter = np.diag(conf).astype(np.float64)
    union = conf.sum(0) + conf.sum(1) - np.diag(conf)
    present = union > 0
    return float(100.0 * (inter[present] / union[present]).mean()) if present.any() else 100.0


def abs_diff(a: np.ndarray, b: np.ndarray, chunk: int = 8) -> tuple[float, float]:
    """max and mean of |a - b| in float64, for logits [B, C, H, W], `chunk` classes at a time: one
    full-resolution float64 difference of a large model's logits is 0.5 GB per copy (150 classes at
    640 x 640), so the whole array would hold several such copies at once."""
    mx, total = 0.0, 0.0
    for c in range(0, a.shape[1], chunk):
        d = np.abs(np.asarray(a[:, c:c + chunk], np.float64) - np.asarray(b[:, c:c + chunk], np.float64))
        mx, total = max(mx, float(d.max())), total + float(d.sum())
    return mx, total / a.size


def _image_metrics(b: dict, t: dict, dynamic: bool = False) -> dict:
    lb, lt = b["logits"], t["logits"]
    max_abs, mean_abs = abs_diff(lb, lt)
    agree = float(100.0 * (lb.argmax(1) == lt.argmax(1)).mean())
    out = {"max_abs": max_abs, "mean_abs": mean_abs, "agreement": agree}
    if "merge_stats" in t:
        sb, st = b["merge_stats"].astype(np.int64), t["merge_stats"].astype(np.int64)
        out["merges_backend"] = sb[0, :, 0].tolist()
        out["merges_torch"] = st[0, :, 0].tolist()
        out["forced"] = int(sb[0, :, 1].sum())
        out["decision_diff"] = int(np.abs(sb[0, :, 0] - st[0, :, 0]).sum())
        out["tokens"] = t["tokens"][0].tolist()
        if dynamic:  # the real token counts: the backend's must be PyTorch's
            out["tokens_backend"] = np.asarray(b["tokens"])[0].tolist()
            out["token_diff"] = int(np.abs(np.asarray(b["tokens"])[0] - t["tokens"][0]).sum())
    return out


#: folders whose weights pass this many bytes are validated in phases (see `validate`)
LEAN_BYTES = 768 << 20


@locks_export_folder("validate")
def validate(export_dir, images=None, backend: str = "onnxruntime", labels=None, precision: str = "fp32",
             limits: Optional[Limits] = None, save_outputs: bool = True, limit_images: Optional[int] = None,
             model=None, trust_checkpoint: bool = False, thresholds=None, lean: Optional[bool] = None) -> dict:
    """Run the parity check; returns the report (also written to DIR/validation/report.<backend>.json).

    thresholds: the thresholds to validate threshold-input entries at (default: their manifest's).
    trust_checkpoint: unpickle the manifest's checkpoint completely (see `load_segmenter`).
    wait: wait for another run that holds the folder instead of stopping (see `algm_export.core.lock`).

    Every file is checked (sha256, external-data locations) before any image is prepared; the backend
    runs one entry at a time (its session is closed before the next entry's is made) and nothing is
    written before every entry has run. For ALGM entries every image also gets the margins of its
    merge decisions (`merging.margins`, float32, on the PyTorch side) and, where the backend exposes
    its decisions (ONNX Runtime), the decisions that differ from PyTorch's.

    lean (default: when the folder's weights pass `LEAN_BYTES`, `model` is not given and there are
    no `labels`): the backend and PyTorch never hold the weights at the same time. Per entry the
    backend runs every image first, its outputs go to a temporary folder (logits memory-mapped back),
    its session is closed, and then the PyTorch model is loaded (again) for the comparison; peak
    memory is about one copy of the weights plus one run's activations instead of two copies."""
    from polygraphy.comparator import RunResults
    from polygraphy.comparator.struct import IterationResult

    from algm_export.runtimes.base import check_input_size
    from algm_export.runtimes.registry import make_runner, normalize_backend

    folder = ExportFolder.load(export_dir, verify=True)
    export_dir = folder.path
    backend = normalize_backend(backend)
    limits = limits or Limits.for_precision(precision)
    runs = folder.runs(thresholds)  # per entry: [None] (threshold built in) or the thresholds to run it at
    entries = folder.entries
    _preflight(entries, backend, precision)  # every file checked before anything is run or written
    if lean is None:
        lean = model is None and labels is None and _weight_bytes(folder) >= LEAN_BYTES
    own_model = model is None

    def load_model():
        with stage("loading the PyTorch model"):
            return folder.model(trust_checkpoint)

    if not lean and model is None:
        model = load_model()
    info = folder.model_info
    n_cls = int(info["n_cls"])
    grid = tuple(info["grid"]) if info.get("grid") else tuple(v // int(info["patch_size"]) for v in info["image_size"])
    inputs = folder.inputs(images, model=model, limit=limit_images)
    folder.resolve("validation", "validation folder")  # a symlink leading out stops here
    report = {"backend": backend, "precision": precision, "images": [n for n, _ in inputs],
              "limits": asdict(limits), "entries": []}
    if lean:
        report["lean"] = True
    pending = []   # (relative path, file in the scratch folder) moved into place once every entry has run
    decisions = backend == "onnxruntime"
    steps = sum(map(len, runs)) * len(inputs) * (2 if lean else 1)   # lean: the backend's runs, then PyTorch's
    with progress_bar(total=steps, desc=f"validate ({backend})", unit="run" if lean else "img") as bar, \
            tempfile.TemporaryDirectory(prefix="algm-validate-") as scratch:
        for e, ts in zip(entries, runs):
            is_base = e.is_baseline
            with stage(f"validating {e.name} ({backend})", announce=False):
                if lean:
                    if own_model:
                        model = None   # the backend's turn: PyTorch's weights leave memory
                        release_memory()
                    runner = make_runner(backend, e, precision, decisions=decisions)
                    check_input_size(runner, info["image_size"], e.name)
                    runner_name = runner.name
                    stash = _run_backend(runner, ts, inputs, Path(scratch) / e.name, bar)
                    runner.close()
                    del runner
                    release_memory()
                    if model is None:
                        model = load_model()
                    runner = None
                else:
                    runner = make_runner(backend, e, precision, model=model, decisions=decisions)
                    runner_name = runner.name
                ref = make_runner("torch", e, model=model, decisions=not is_base)
                # static entries: also the reference (per_image, no capacities) vs static
                dyn = None if is_base or e.is_dynamic else make_runner("torch", e, model=model, mode="reference")
                setting = None if is_base else e.setting()
                try:
                    for ti, t in enumerate(ts):
                        kw = {} if t is None else {"threshold": t}
                        per_image, conf = [], np.zeros((n_cls, n_cls), dtype=np.int64)
                        res_b, res_t = [], []
                        for ii, (name, x) in enumerate(inputs):
                            b = _unstash(stash[ti][ii]) if lean else runner.infer(x, **kw)
                            r = ref.infer(x, **kw)
                            m = {"image": name, **_image_metrics(b, r, dynamic=e.is_dynamic)}
                            if setting is not None:
                                m.update(_merge_margins(b, r, setting, grid, model.num_prefix, e.capacities, t))
                            conf += confusion(b["logits"].argmax(1), r["logits"].argmax(1), n_cls)
                            if save_outputs:
                                res_b.append(IterationResult(compact_outputs(b), runner_name=runner_name))
                                res_t.append(IterationResult(compact_outputs(r), runner_name=ref.name))
                            del b   # before the reference runs: at most two full-resolution logit arrays at once
                            if dyn is not None:
                                d = dyn.infer(x)
                                m["dynamic_vs_static_max_abs"] = abs_diff(d["logits"], r["logits"])[0]
                                m["dynamic_vs_static_agreement"] = float(
                                    100 * (d["logits"].argmax(1) == r["logits"].argmax(1)).mean())
                                del d
                            del r
                            per_image.append(m)
                            bar.update(1)
                        summ = summarize(per_image, miou(conf), limits)
                        if labels is not None:
                            summ.update(label_miou(labels, ref, runner, model.cfg, kw))
                        entry_report = {"name": e.name, "threshold": e.threshold if t is None else t,
                                        "capacities": e.capacities, "summary": summ, "per_image": per_image}
                        if not is_base:
                            entry_report["token_mode"] = e.token_mode
                        if e.takes_threshold:
                            entry_report["threshold_input"] = True
                        if save_outputs:
                            rr = RunResults()
                            rr.append((runner_name, res_b))
                            rr.append((ref.name, res_t))
                            tag = e.name if t is None else f"{e.name}.t{t:.3f}"
                            rel = f"validation/{tag}.{backend}.{precision}.outputs.json"
                            # to the scratch folder now (its arrays leave memory), into place at the end
                            held = Path(scratch) / f"outputs.{len(pending)}.json"
                            rr.save(str(held))
                            del rr, res_b, res_t
                            pending.append((rel, held))
                            entry_report["outputs"] = rel
                        report["entries"].append(entry_report)
                finally:
                    for rn in (runner, ref, dyn):
                        if rn is not None:
                            rn.close()
                    # the loop variable too: it kept the last runner (and through it this entry's
                    # PyTorch model) alive while the next entry loaded its own
                    del runner, ref, dyn, rn
                    release_memory()
        for rel, held in pending:
            p = folder.resolve(rel, "validation output")
            p.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(held), str(p))
    report["pass"] = all(e["summary"]["pass"] for e in report["entries"])
    folder.write_json(f"validation/report.{backend}.{precision}.json", report, "validation report")
    return report


def _weight_bytes(folder) -> int:
    """The folder's weights: its external data files, else the baseline graph's size."""
    if folder.data_files:
        return sum(int(d.get("bytes") or 0) for d in folder.data.get("data_files") or [])
    p = folder.resolve(folder.baseline.raw["onnx"], "baseline ONNX")
    return p.stat().st_size if p.is_file() else 0


_STASH_LISTS = ("assignments", "merge_inputs")


def _run_backend(runner, ts, inputs, where: Path, bar) -> list[list[Path]]:
    """Run every (threshold, image) of one entry on the backend and keep the outputs on disk
    (`where/<t>/<i>/`: logits.npy, the rest in rest.npz); returns the folders, per threshold per image."""
    out = []
    for ti, t in enumerate(ts):
        kw = {} if t is None else {"threshold": t}
        row = []
        for ii, (_name, x) in enumerate(inputs):
            b = runner.infer(x, **kw)
            d = where / str(ti) / str(ii)
            d.mkdir(parents=True)
            np.save(d / "logits.npy", b.logits)
            rest = {}
            for k in ("merge_stats", "tokens"):
                if b.get(k) is not None:
                    rest[k] = np.asarray(b[k])
            for i, a in enumerate(b.get("assignments") or []):
                if a is not None:
                    rest[f"assignments.{i}"] = np.asarray(a)
            for i, rec in enumerate(b.get("merge_inputs") or []):
                for k, v in rec.items():
                    if v is not None:
                        rest[f"merge_inputs.{i}.{k}"] = np.asarray(v)
            np.savez(d / "rest.npz", **rest)
            row.append(d)
            del b
            bar.update(1)
        out.append(row)
    return out


def _unstash(d: Path):
    """A `RunOutput` back from `_run_backend`'s folder (logits memory-mapped)."""
    from algm_export.runtimes.base import RunOutput

    out = RunOutput(np.load(d / "logits.npy", mmap_mode="r"))
    with np.load(d / "rest.npz", allow_pickle=False) as z:
        data = {k: z[k] for k in z.files}
    out.merge_stats = data.get("merge_stats")
    out.tokens = data.get("tokens")
    steps = sorted({int(k.split(".")[1]) for k in data if k.startswith(_STASH_LISTS)})
    if steps:
        n = max(steps) + 1
        if any(k.startswith("assignments.") for k in data):
            out.assignments = [data.get(f"assignments.{i}") for i in range(n)]
        if any(k.startswith("merge_inputs.") for k in data):
            out.merge_inputs = [{"x": data.get(f"merge_inputs.{i}.x"), "size": data.get(f"merge_inputs.{i}.size")}
                                for i in range(n)]
    return out


def _preflight(entries, backend: str, precision: str) -> None:
    """Check every file the backend will read (sha256; an ONNX file's external-data locations) before
    anything runs, so that a bad folder stops before any output is written."""
    for e in entries:
        if backend == "onnxruntime":
            e.onnx_path(precision)
        else:
            e.engine(precision, backend).engine_path()


def _merge_margins(b, r, setting, grid, P, capacities, threshold) -> dict:
    """The margins of every merge decision (PyTorch side, float32) and the decisions the backend
    made differently (when it exposes them), for one image."""
    from algm_export.merging.margins import decision_differences, step_margins

    if r.get("merge_inputs") is None:
        return {}
    out = {"margins": step_margins(r.merge_inputs, setting, grid, P, capacities, threshold)[0]}
    if b.get("assignments") is not None and r.get("assignments") is not None:
        out["decision_differences"] = decision_differences(
            setting, grid, P, r.assignments, b.assignments, r.merge_inputs, b.get("merge_inputs"),
            threshold=threshold, capacities=capacities)
    return out


def compact_outputs(out: dict, stride: int = 16) -> dict:
    """What is saved per image as polygraphy outputs: full-resolution logits are 157 MB per
    ViT 512 image (150 classes), so keep the per-pixel labels (argmax), the logits at one pixel per
    patch (`logits[..., ::16, ::16]`, the grid the model predicts on) and the merge statistics.
    Plain arrays: a lean run's logits come back memory-mapped, which polygraphy cannot write."""
    from algm_export.runtimes.base import label_dtype

    lo = np.asarray(out["logits"])
    keep = {"labels": lo.argmax(1).astype(label_dtype(lo.shape[1])),
            f"logits_stride{stride}": np.ascontiguousarray(lo[..., ::stride, ::stride])}
    if "merge_stats" in out:
        keep["merge_stats"] = np.asarray(out["merge_stats"])
    return keep


def summarize(per_image: list, parity_miou: float, limits: Limits) -> dict:
    ag = [m["agreement"] for m in per_image]
    s = {
        "images": len(per_image),
        "max_abs": max(m["max_abs"] for m in per_image),
        "mean_abs": float(np.mean([m["mean_abs"] for m in per_image])),
        "agreement_mean": float(np.mean(ag)),
        "agreement_min": float(np.min(ag)),
        "parity_miou": parity_miou,
        "images_within_1e-3": sum(m["max_abs"] <= 1e-3 for m in per_image),
        "images_within_1e-4": sum(m["max_abs"] <= 1e-4 for m in per_image),
    }
    dynamic = "token_diff" in per_image[0]
    if "forced" in per_image[0]:
        s["forced_merges"] = sum(m["forced"] for m in per_image)
        s["decision_diff_images"] = sum(m["decision_diff"] > 0 for m in per_image)
        s["tokens_mean"] = np.mean([m["tokens"] for m in per_image], axis=0).round(1).tolist()
        if not dynamic:
            s["dynamic_vs_static_agreement_min"] = min(m["dynamic_vs_static_agreement"] for m in per_image)
    if dynamic:
        toks = np.array([m["tokens"] for m in per_image])
        s["tokens_min"], s["tokens_max"] = toks.min(0).tolist(), toks.max(0).tolist()
        s["token_mismatch_images"] = sum(m["token_diff"] > 0 for m in per_image)
        s["token_mismatches_allowed"] = limits.token_mismatches_allowed(len(per_image))
    margins = [st["margin"] for m in per_image for st in m.get("margins") or [] if st.get("margin") is not None]
    if margins:
        s["smallest_margin"] = float(min(margins))
    if any("decision_differences" in m for m in per_image):
        s["decision_difference_images"] = sum(m.get("decision_differences") is not None for m in per_image)
    fails = []
    if s["agreement_mean"] < limits.mean_agreement:
        fails.append(f"mean argmax agreement {s['agreement_mean']:.3f}% < {limits.mean_agreement}%")
    if s["agreement_min"] < limits.min_agreement:
        fails.append(f"an image has argmax agreement {s['agreement_min']:.3f}% < {limits.min_agreement}%")
    if parity_miou < limits.parity_miou:
        fails.append(f"parity mIoU {parity_miou:.3f} < {limits.parity_miou}")
    if dynamic and s["token_mismatch_images"] > s["token_mismatches_allowed"]:
        fails.append(f"token counts differ from PyTorch's on {s['token_mismatch_images']} of {len(per_image)} images "
                     f"(allowed: {s['token_mismatches_allowed']}, the docs/algorithm.md: numerical sensitivity near-ties)")
    if dynamic and s["forced_merges"]:
        fails.append(f"{s['forced_merges']} forced merges: dynamic token mode never forces one")
    s["failures"] = fails
    s["pass"] = not fails
    return s


def label_miou(labels_dir, ref, runner, cfg, infer_kw: Optional[dict] = None) -> dict:
    """Real mIoU of PyTorch (`ref`, a torch runner) and of the backend (`runner`) on an ADE20K-layout
    folder (label 0 ignored); `infer_kw`: what both runners' `infer` take (a threshold-input entry's
    threshold)."""
    import torch
    from PIL import Image

    from algm_export.models.images import load_image, model_input
    from algm_export.models.inference import sliding_window_logits

    root = Path(labels_dir)
    img_dir, ann_dir = root / "images", root / "annotations"
    if not img_dir.is_dir() or not ann_dir.is_dir():
        raise ConfigError(f"--labels {root}: expected ADE20K layout with images/ and annotations/ folders")
    n = cfg.n_cls
    conf_t = np.zeros((n, n), dtype=np.int64)
    conf_b = np.zeros((n, n), dtype=np.int64)
    ws = cfg.image_size[0]
    count = 0
    for ip in sorted(img_dir.iterdir()):
        ap = ann_dir / (ip.stem + ".png")
        if not ap.exists():
            continue
        img = load_image(ip)
        gt = np.asarray(Image.open(ap)).astype(np.int64) - 1          # reduce_zero_label: 0 -> ignored
        gt[gt < 0] = 255
        x = model_input(img, ref.model, size=img.shape[:2])

        def torch_fn(b):
            return torch.from_numpy(ref.infer(b, **(infer_kw or {})).logits)

        def backend_fn(b):
            return torch.from_numpy(runner.infer(b, **(infer_kw or {})).logits)

        lt = sliding_window_logits(torch_fn, x, ws, ws * 2 // 3, im_size=ws)
        lb = sliding_window_logits(backend_fn, x, ws, ws * 2 // 3, im_size=ws)
        conf_t += confusion(lt.argmax(1).numpy(), gt, n, ignore=255)
        conf_b += confusion(lb.argmax(1).numpy(), gt, n, ignore=255)
        count += 1
    if not count:
        raise ConfigError(f"--labels {root}: no image in images/ has a matching annotations/<name>.png")
    mt, mb = miou(conf_t), miou(conf_b)
    return {"label_images": count, "miou_torch": mt, "miou_backend": mb, "miou_delta": mb - mt}


def format_report(report: dict) -> str:
    from algm_export.core.tables import format_table

    rows = []
    for e in report["entries"]:
        s = e["summary"]
        rows.append([
            e["name"], "-" if e["threshold"] is None else f"{e['threshold']:.3f}",
            ("dynamic" if e.get("token_mode") == "dynamic" else "-") if not e.get("capacities")
            else ",".join(map(str, e["capacities"])),
            f"{s['max_abs']:.2e}", f"{s['mean_abs']:.2e}", f"{s['images_within_1e-3']}/{s['images']}",
            f"{s['agreement_mean']:.3f}", f"{s['agreement_min']:.3f}",
            f"{s['parity_miou']:.2f}", str(s.get("forced_merges", "-")), str(s.get("decision_diff_images", "-")),
            "-" if "tokens_mean" not in s else "/".join(f"{t:.0f}" for t in s["tokens_mean"]),
            "PASS" if s["pass"] else "FAIL",
        ])
    head = ["setting", "tau", "capacities", "max|d|", "mean|d|", "<=1e-3", "agree%", "min%", "pmIoU", "forced",
            "flips", "tokens", ""]
    txt = format_table(head, rows)
    for e in report["entries"]:
        s = e["summary"]
        if "token_mismatch_images" in s:
            where = f"{e['name']} at {e['threshold']:.3f}" if e.get("threshold_input") else e["name"]
            per = ", ".join(f"{m['image']} " + "/".join(map(str, m["tokens_backend"])) for m in e["per_image"])
            txt += (f"\n  {where}: tokens per image equal PyTorch's on {s['images'] - s['token_mismatch_images']}"
                    f"/{s['images']} images: {per}")
        txt += format_margins(e)
        for f in s["failures"]:
            txt += f"\n  {e['name']}: {f}"
        if "miou_torch" in e["summary"]:
            s = e["summary"]
            txt += f"\n  {e['name']}: mIoU torch {s['miou_torch']:.2f}  backend {s['miou_backend']:.2f}  delta {s['miou_delta']:+.3f}"
    return txt


def _g(v) -> str:
    return "-" if v is None else f"{v:.2g}"


def format_margins(entry: dict) -> str:
    """Per image: the smallest margin of every merge step (threshold / argmax or rank), and the
    decisions the backend made differently from PyTorch with their margins."""
    lines = []
    where = f"{entry['name']} at {entry['threshold']:.3f}" if entry.get("threshold_input") else entry["name"]
    for m in entry["per_image"]:
        if not m.get("margins"):
            continue
        parts = []
        for st in m["margins"]:
            second = (f"rank {_g(st.get('rank_margin'))}" if st["op"] == "clap"
                      else f"argmax {_g(st.get('argmax_margin'))}")
            parts.append(f"{st['op'].upper()}@{st['layer']} tau {_g(st.get('threshold_margin'))} {second}")
        line = f"\n  {where}: {m['image']}: margins " + ", ".join(parts)
        diff = m.get("decision_differences")
        if diff:
            ds = "; ".join(f"{d['decision']}: torch {d['torch']}, backend {d['backend']} (margin {_g(d.get('torch_margin'))}"
                           + (f", backend's {_g(d.get('backend_margin'))}" if d.get("backend_margin") is not None else "")
                           + ")" for d in diff["decisions"][:3])
            line += (f"\n    decisions differ at step {diff['step']} ({diff['op'].upper()}, layer {diff['layer']}, "
                     f"{diff['patches_differing']} patches): {ds or 'token order only'}")
        elif "decision_differences" in m:
            line += "; every decision equals PyTorch's"
        lines.append(line)
    return "".join(lines)
