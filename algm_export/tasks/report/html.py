"""`algm-export report DIR`: one self-contained HTML page (PNGs embedded, and written beside it).

Sections: the manifest summary, the validation results, the benchmark table and plot, static
and dynamic token mode side by side at the published threshold 0.88 (when the folder has both),
the published numbers of the ALGM paper beside ours, and merge pictures on sample images.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Optional

from algm_export.artifacts import ExportFolder, atomic_path, locks_export_folder
from algm_export.core.errors import ArtifactError
from algm_export.core.published import PUBLISHED
from algm_export.core.tables import tokens_text

#: the threshold the static / dynamic comparison is shown at (the published one)
COMPARE_AT = 0.88


class _Html(str):
    """Markup we wrote ourselves: `_table` puts it in unescaped (everything else is escaped)."""


_BAD_REPORT = (KeyError, TypeError, ValueError, IndexError, AttributeError)


def _read_json(path: Path, what: str, fix: str):
    try:
        return json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError) as e:
        raise ArtifactError(f"{path} is not a readable {what} ({type(e).__name__}); {fix}") from None

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1200px;color:#222;padding:0 1em}
h1{font-size:1.6em;margin-bottom:.2em} h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em} th,td{border:1px solid #ccc;padding:.3em .6em;text-align:right}
th{background:#f3f3f3} td:first-child,th:first-child{text-align:left}
.pass{color:#0a7d27;font-weight:600}.fail{color:#b00020;font-weight:600}.note{color:#555;font-size:.9em}
img{max-width:100%;border:1px solid #ddd;margin:.3em 0} .grid{display:grid;grid-template-columns:1fr;gap:.8em}
code{background:#f5f5f5;padding:.1em .3em}
"""


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _table(head, rows, cls=None) -> str:
    out = ["<table>", "<tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in head) + "</tr>"]
    for r in rows:
        out.append("<tr>" + "".join(f"<td>{c if isinstance(c, _Html) else html.escape(str(c))}</td>" for c in r)
                   + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def _ok(b: bool, yes: str = "PASS", no: str = "FAIL") -> str:
    return _Html(f'<span class="pass">{yes}</span>' if b is True else f'<span class="fail">{no}</span>')


def merge_pictures(folder: ExportFolder, out_dir: Path, n_images: int = 3, model=None,
                   trust_checkpoint: bool = False) -> list[Path]:
    """One PNG per (sample image, setting): the photo and its CLAP windows and GBM groups, as the
    entry runs in PyTorch (`runtimes.registry`: static with its capacities, or dynamic)."""
    from algm_export.models.images import model_input, sample_images
    from algm_export.runtimes.registry import torch_runner
    from algm_export.tasks.visualize import merge_png, step_titles

    model = model or folder.model(trust_checkpoint)
    cfg = model.cfg
    paths = []
    for name, img in sample_images(n_images):
        x = model_input(img, model)
        shown = _resize(img, cfg.image_size)
        for e in folder.settings:
            s = e.setting()
            with torch_runner(model, s, e.capacities, e.token_mode, assignments=True) as r:
                out = r.infer(x, **({"threshold": e.threshold} if e.takes_threshold else {}))
            p = out_dir / f"merge_{name}_{e.name}.png"
            titles = [f"{t} ({int(k)} tokens)" for t, k in zip(step_titles(s.layers), out.tokens[0])]
            merge_png(shown, [a[0] for a in out.assignments], cfg.grid, cfg.patch_size, p, titles=titles)
            paths.append(p)
    return paths


def _resize(img, hw):
    from PIL import Image
    import numpy as np

    return np.asarray(Image.fromarray(img).resize((hw[1], hw[0]), Image.BILINEAR))


def _validation_parts(folder: ExportFolder) -> list[str]:
    """The parity section, from DIR/validation/report.*.json (files written by `validate`)."""
    reps = sorted(folder.resolve("validation", "validation folder").glob("report.*.json"))
    if not reps:
        return ["<h2>Parity with PyTorch</h2><p>No validation yet: run <code>algm-export validate DIR</code>.</p>"]
    parts = ["<h2>Parity with PyTorch</h2><p class='note'>Parity is statistical (spec 2.1): merge "
             "decisions that sit within float rounding of a threshold may flip; flips are counted.</p>"]
    fix = "run `algm-export validate DIR` again (or delete the file)"
    for f in reps:
        rep = _read_json(f, "validation report", fix)
        try:
            rows = []
            for e in rep["entries"]:
                s = e["summary"]
                rows.append([_entry_label(e), f"{s['max_abs']:.2e}", f"{s['mean_abs']:.2e}",
                             f"{s['agreement_mean']:.3f}", f"{s['agreement_min']:.3f}", f"{s['parity_miou']:.2f}",
                             s.get("forced_merges", "-"), s.get("decision_diff_images", "-"),
                             "-" if "tokens_mean" not in s else " / ".join(f"{t:.0f}" for t in s["tokens_mean"]),
                             _token_match(s), _ok(s["pass"])])
            parts.append(f"<h3>{html.escape(str(rep['backend']))} ({html.escape(str(rep['precision']))}, "
                         f"{len(rep['images'])} images)</h3>"
                         + _table(["setting", "max |d|", "mean |d|", "agree %", "min agree %", "parity mIoU",
                                   "forced", "images w/ flips", "tokens (mean)", "token counts = PyTorch", ""],
                                  rows))
        except _BAD_REPORT as e:
            raise ArtifactError(f"{f} is not a validation report of algm-export ({type(e).__name__}: {e}); "
                                f"{fix}") from None
    return parts


def _entry_label(e: dict) -> str:
    """A report row's setting: its name, with the threshold it ran at for a threshold-input entry."""
    return f"{e['name']} @{e['threshold']:.3f}" if e.get("threshold_input") else str(e["name"])


def _token_match(s: dict) -> str:
    """Dynamic entries: images whose token counts equal PyTorch's, of all."""
    if "token_mismatch_images" not in s:
        return "-"
    return f"{s['images'] - s['token_mismatch_images']}/{s['images']}"


def _is_dynamic(r: dict) -> bool:
    return r.get("token_mode") == "dynamic"


def _at(r: dict, t: float = COMPARE_AT) -> bool:
    return r.get("threshold") is not None and abs(float(r["threshold"]) - t) < 1e-9


def _validation_index(folder: ExportFolder) -> dict:
    """{(backend, setting, threshold): summary} of the validation reports (unreadable ones are left to
    the parity section, which names them)."""
    out = {}
    for f in sorted(folder.resolve("validation", "validation folder").glob("report.*.json")):
        try:
            rep = json.loads(f.read_bytes())
            for e in rep["entries"]:
                out[(rep["backend"], e["name"], round(float(e["threshold"] or 0), 6))] = e["summary"]
        except Exception:  # noqa: BLE001
            continue
    return out


def _modes_part(folder: ExportFolder, bench: Optional[dict]) -> list[str]:
    """Static and dynamic token mode side by side at the published threshold (`COMPARE_AT`): parity
    with PyTorch, tokens per image, FLOP ratio and measured speed-up; only for a folder that has both."""
    entries = folder.settings
    static = [e for e in entries if not e.is_dynamic and abs(e.threshold - COMPARE_AT) < 1e-9]
    dynamic = [e for e in entries if e.is_dynamic and any(abs(t - COMPARE_AT) < 1e-9 for t in e.thresholds)]
    if not static or not dynamic:
        return []
    names = {e.name for e in static + dynamic}
    parity = _validation_index(folder)
    rows = []
    for r in (bench or {}).get("results", []):
        if r["setting"] not in names or not _at(r):
            continue
        s = parity.get((r["backend"], r["setting"], round(COMPARE_AT, 6)))
        par = "-" if s is None else _Html(f"{s['agreement_mean']:.3f} % / {s['max_abs']:.1e} " + _ok(s["pass"]))
        rows.append(["dynamic" if _is_dynamic(r) else "static", r["setting"], r["backend"], r["batch"], par,
                     "-" if s is None else _token_match(s), tokens_text(r.get("tokens"), _is_dynamic(r)),
                     f"{r['gmacs']:.1f}", f"{r['flop_ratio']:.2f}", f"{r['speedup']:.2f}",
                     f"{r['speedup_vs_flop_ratio']:.2f}"])
    if not rows:  # no benchmark yet: the parity side alone
        for (backend, name, t), s in parity.items():
            if name in names and abs(t - COMPARE_AT) < 1e-9:
                e = next(x for x in entries if x.name == name)
                rows.append(["dynamic" if e.is_dynamic else "static", name, backend, "-",
                             _Html(f"{s['agreement_mean']:.3f} % / {s['max_abs']:.1e} " + _ok(s["pass"])),
                             _token_match(s), "-", "-", "-", "-", "-"])
    if not rows:
        return [f"<h2>Static and dynamic token mode at {COMPARE_AT}</h2><p>Run <code>algm-export validate DIR"
                "</code> and <code>algm-export bench DIR</code> to compare them.</p>"]
    rows.sort(key=lambda r: (str(r[2]), str(r[3]), r[0] != "static"))
    return [f"<h2>Static and dynamic token mode at {COMPARE_AT}</h2><p class='note'>Static: fixed token slots "
            "(the calibrated capacities, computed for every image). Dynamic: as many slots as each image needs "
            "(tokens per image: mean and min-max over the benchmark's images; the FLOP ratio is the baseline's "
            "MACs over their mean per-image MACs). Parity: mean argmax agreement / max |logit difference| "
            "against PyTorch in the same token mode.</p>"
            + _table(["mode", "setting", "backend", "batch", "parity", "token counts = PyTorch",
                      "tokens per image", "GMACs", "FLOP ratio", "speed-up", "speed-up / FLOP ratio"], rows)]


def _bench_parts(folder: ExportFolder, bench: dict, where: Path) -> tuple[list[str], list[str]]:
    """The speed section and the line under the published numbers, from DIR/bench/bench.json."""
    esc = lambda v: html.escape(str(v))  # noqa: E731
    try:
        rows = [[r["backend"], r["batch"], _entry_label(r) if r.get("threshold_input") else r["setting"],
                 f"{r['latency_ms']:.1f}", f"{r['images_per_s']:.2f}",
                 tokens_text(r.get("tokens"), _is_dynamic(r)), f"{r['gmacs']:.1f}", f"{r['flop_ratio']:.2f}",
                 f"{r['speedup']:.2f}", f"{r['speedup_vs_flop_ratio']:.2f}"] for r in bench["results"]]
        mach = bench["machine"]
        parts = [f"<h2>Speed</h2><p class='note'>{esc(mach['cpus'])} CPUs ({esc(mach['processor'])}), "
                 f"{esc(mach['threads'])} threads, {esc(bench['repeats'])} interleaved repeats, median latency.</p>"
                 + _table(["backend", "batch", "setting", "ms", "img/s", "tokens per image", "GMACs", "FLOP ratio",
                           "speed-up", "speed-up / FLOP ratio"], rows)]
        for r in bench["results"]:
            if _at(r):
                ok = r["speedup_vs_flop_ratio"] >= 0.9
                mode = " dynamic token mode," if _is_dynamic(r) else ""
                parts.append(f"<p>Target at the published threshold 0.88 ({esc(r['backend'])},{mode} batch "
                             f"{esc(r['batch'])}): measured speed-up {r['speedup']:.2f}x vs 0.9 x FLOP ratio "
                             f"{0.9 * r['flop_ratio']:.2f}: {_ok(ok, 'MET', 'NOT MET')}</p>")
        png = folder.resolve(bench.get("plot", "bench/bench.png"), f"plot named by {where.name}",
                             "run `algm-export bench DIR` again (or delete bench/bench.json)")
        if png.is_file():
            parts.append(_img(png, "speed-up plot"))
        ours = [r for r in bench["results"] if r["setting"] != "baseline"]
        tail = []
        if ours:
            best = max(ours, key=lambda r: r["speedup"])
            tail.append(f"<p>Ours ({esc(bench['backbone'])}, random weights, so no mIoU): best measured speed-up "
                        f"{best['speedup']:.2f}x at {esc(best['setting'])} ({esc(best['backend'])}, batch "
                        f"{esc(best['batch'])}) for a FLOP ratio of {best['flop_ratio']:.2f} "
                        f"({100 * best['speedup_vs_flop_ratio']:.0f}% of the ideal).</p>")
    except _BAD_REPORT as e:
        raise ArtifactError(f"{where} is not a benchmark report of algm-export ({type(e).__name__}: {e}); run "
                            "`algm-export bench DIR` again (or delete the file)") from None
    return parts, tail


def _model_for_pictures(folder: ExportFolder, trust_checkpoint: bool):
    """The export's model for the merge pictures; None when its checkpoint is not on this machine
    (the page is written without pictures). A checkpoint that changed or is refused stops the report."""
    src = folder.model_info["source"]
    if not src.startswith("builtin:") and not Path(src).exists():
        return None
    return folder.model(trust_checkpoint)


@locks_export_folder("report")
def write_report(export_dir, out: Optional[str] = None, n_images: int = 3, model=None,
                 trust_checkpoint: bool = False) -> Path:
    """Write the HTML report (DIR/report/index.html, or OUT/index.html); returns its path.

    Every value taken from the folder's files is escaped; paths in them are resolved inside DIR.
    trust_checkpoint: see `load_segmenter`; wait: see `algm_export.core.lock`."""
    import warnings

    folder = ExportFolder.load(export_dir)
    man = folder.data
    out_dir = Path(out) if out else folder.resolve("report", "report folder")
    bj = folder.resolve("bench/bench.json", "bench report")
    bench = _read_json(bj, "benchmark report", "run `algm-export bench DIR` again (or delete the file)") \
        if bj.is_file() else None
    if bench is not None and not isinstance(bench, dict):
        raise ArtifactError(f"{bj} is not a benchmark report of algm-export; run `algm-export bench DIR` again")
    validation = _validation_parts(folder)
    if model is None:
        model = _model_for_pictures(folder, trust_checkpoint)
    speed, ours = _bench_parts(folder, bench, bj) if bench else (
        ["<h2>Speed</h2><p>No benchmark yet: run <code>algm-export bench DIR</code>.</p>"], [])
    out_dir.mkdir(parents=True, exist_ok=True)
    m = man["model"]
    esc = lambda v: html.escape(str(v))  # noqa: E731
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>algm-export report</title>"
             f"<style>{CSS}</style></head><body>",
             f"<h1>algm-export report</h1><p class='note'>{esc(m['source'])} &middot; {esc(m['backbone'])} + "
             f"{esc(m['decoder'])} decoder &middot; {m['image_size'][0]}x{m['image_size'][1]} &middot; {m['n_cls']} "
             f"classes &middot; created {esc(man.get('created', ''))}</p>"]

    # manifest summary
    rows = [["baseline", "-", "-", "-", man["baseline"]["onnx"], man["baseline"]["sha256"][:12]]]
    for e in folder.settings:
        tau = (" / ".join(f"{t:.3f}" for t in e.thresholds) + " (input)") if e.takes_threshold else f"{e.threshold:.3f}"
        caps = "dynamic" if e.is_dynamic else ",".join(map(str, e.capacities or []))
        rows.append([e.name, tau, ",".join(map(str, e.layers)), caps, e.raw["onnx"], e.raw["sha256"][:12]])
    parts.append("<h2>Exported models</h2>" + _table(["setting", "threshold", "layers", "capacities", "onnx", "sha256"], rows))
    if man.get("engines"):
        er = [[e["setting"], e["backend"], e.get("backend_version") or "", e["precision"],
               ",".join(map(str, e.get("compute_capabilities") or [])) or "-",
               f"{e.get('build_seconds') or 0:.1f}", Path(e["file"]).name] for e in man["engines"]]
        parts.append("<h3>Engines</h3>" + _table(["setting", "backend", "version", "precision", "SM", "build s", "file"], er))

    parts += validation + speed + _modes_part(folder, bench)

    # published numbers
    prow = []
    for k, v in PUBLISHED.items():
        b, a = v["base"], v["algm"]
        prow.append([k, v["crop"], f"{b[0]} / {b[1]} / {b[2]}", f"{a[0]} / {a[1]} / {a[2]}",
                     f"+{100 * (a[1] / b[1] - 1):.0f}%", f"{b[2] / a[2]:.2f}"])
    parts.append("<h2>Published numbers (ADE20K, batch 32 on one GPU)</h2>"
                 + _table(["backbone", "crop", "baseline mIoU / im/s / GFLOPs", "+ALGM mIoU / im/s / GFLOPs",
                           "throughput", "FLOP ratio"], prow))
    parts += ours

    # merge pictures
    try:
        if model is None:
            raise FileNotFoundError(f"the checkpoint {m['source']} is not on this machine")
        pics = merge_pictures(folder, out_dir, n_images, model, trust_checkpoint)
        parts.append("<h2>What was merged</h2><p class='note'>Each panel colours the groups of patches that became "
                     "one token: CLAP windows, then GBM groups. Plain patches were kept.</p><div class='grid'>")
        parts += [_img(p, p.stem) for p in pics]
        parts.append("</div>")
    except Exception as e:  # noqa: BLE001  (the page is still worth having without the pictures)
        warnings.warn(f"merge pictures skipped: {e}")
        parts.append(f"<h2>What was merged</h2><p class='fail'>pictures failed: {html.escape(str(e))}</p>")
    parts.append("</body></html>")
    page = out_dir / "index.html"
    with atomic_path(page) as tmp:
        tmp.write_text("\n".join(parts))
    return page
