"""`algm-export report DIR`: one self-contained HTML page (PNGs embedded, and written beside it).

Sections: the manifest summary, the validation results, the benchmark table and plot, the
published numbers of the ALGM paper beside ours, and merge pictures on sample images.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Optional

from algm_export.manifest import load_manifest

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
        out.append("<tr>" + "".join(f"<td>{c if str(c).startswith('<span') else html.escape(str(c))}</td>" for c in r)
                   + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def _ok(b: bool) -> str:
    return '<span class="pass">PASS</span>' if b else '<span class="fail">FAIL</span>'


def merge_pictures(export_dir: Path, man: dict, out_dir: Path, n_images: int = 3, model=None,
                   trust_checkpoint: bool = False) -> list[Path]:
    """One PNG per (sample image, setting): the photo and its CLAP windows and GBM groups."""
    import torch

    from algm_export.images import sample_images, to_model_input
    from algm_export.merging.patch import apply_algm
    from algm_export.merging.setting import AlgmSetting
    from algm_export.validate import model_from_manifest
    from algm_export.visualize import merge_png, step_titles

    model = model or model_from_manifest(man, trust_checkpoint)
    cfg = model.cfg
    paths = []
    for name, img in sample_images(n_images):
        x = to_model_input(img, cfg.image_size, cfg.normalization)
        shown = _resize(img, cfg.image_size)
        for e in man["settings"]:
            s = AlgmSetting(e["threshold"], tuple(e["window"]), tuple(e["layers"]), "per_image")
            m = apply_algm(model, s, e["capacities"])
            with torch.no_grad():
                m(x)
            p = out_dir / f"merge_{name}_{e['name']}.png"
            titles = [f"{t} ({int(k)} tokens)" for t, k in zip(step_titles(s.layers), m.merge_stats["tokens"][0])]
            merge_png(shown, [a[0] for a in m.assignments], cfg.grid, cfg.patch_size, p, titles=titles)
            paths.append(p)
    return paths


def _resize(img, hw):
    from PIL import Image
    import numpy as np

    return np.asarray(Image.fromarray(img).resize((hw[1], hw[0]), Image.BILINEAR))


def write_report(export_dir, out: Optional[str] = None, n_images: int = 3, model=None,
                 trust_checkpoint: bool = False) -> Path:
    export_dir = Path(export_dir)
    man = load_manifest(export_dir)
    out_dir = Path(out) if out else export_dir / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    m = man["model"]
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>algm-export report</title>"
             f"<style>{CSS}</style></head><body>",
             f"<h1>algm-export report</h1><p class='note'>{html.escape(m['source'])} &middot; {m['backbone']} + "
             f"{m['decoder']} decoder &middot; {m['image_size'][0]}x{m['image_size'][1]} &middot; {m['n_cls']} classes "
             f"&middot; created {html.escape(man.get('created', ''))}</p>"]

    # manifest summary
    rows = [["baseline", "-", "-", "-", man["baseline"]["onnx"], man["baseline"]["sha256"][:12]]]
    for s in man["settings"]:
        rows.append([s["name"], f"{s['threshold']:.3f}", ",".join(map(str, s["layers"])),
                     ",".join(map(str, s["capacities"])), s["onnx"], s["sha256"][:12]])
    parts.append("<h2>Exported models</h2>" + _table(["setting", "threshold", "layers", "capacities", "onnx", "sha256"], rows))
    if man.get("engines"):
        er = [[e["setting"], e["backend"], e.get("backend_version", ""), e["precision"],
               ",".join(map(str, e.get("compute_capabilities") or [])) or "-", f"{e.get('build_seconds', 0):.1f}",
               Path(e["file"]).name] for e in man["engines"]]
        parts.append("<h3>Engines</h3>" + _table(["setting", "backend", "version", "precision", "SM", "build s", "file"], er))

    # validation
    reps = sorted((export_dir / "validation").glob("report.*.json"))
    if reps:
        parts.append("<h2>Parity with PyTorch</h2><p class='note'>Parity is statistical (spec 2.1): merge "
                     "decisions that sit within float rounding of a threshold may flip; flips are counted.</p>")
        for f in reps:
            rep = json.loads(f.read_text())
            rows = []
            for e in rep["entries"]:
                s = e["summary"]
                rows.append([e["name"], f"{s['max_abs']:.2e}", f"{s['mean_abs']:.2e}", f"{s['agreement_mean']:.3f}",
                             f"{s['agreement_min']:.3f}", f"{s['parity_miou']:.2f}", s.get("forced_merges", "-"),
                             s.get("decision_diff_images", "-"),
                             "-" if "tokens_mean" not in s else " / ".join(f"{t:.0f}" for t in s["tokens_mean"]),
                             _ok(s["pass"])])
            parts.append(f"<h3>{html.escape(rep['backend'])} ({rep['precision']}, {len(rep['images'])} images)</h3>"
                         + _table(["setting", "max |d|", "mean |d|", "agree %", "min agree %", "parity mIoU",
                                   "forced", "images w/ flips", "tokens (mean)", ""], rows))
    else:
        parts.append("<h2>Parity with PyTorch</h2><p>No validation yet: run <code>algm-export validate DIR</code>.</p>")

    # benchmark
    bj = export_dir / "bench" / "bench.json"
    bench = json.loads(bj.read_text()) if bj.exists() else None
    if bench:
        rows = [[r["backend"], r["batch"], r["setting"], f"{r['latency_ms']:.1f}", f"{r['images_per_s']:.2f}",
                 f"{r['gmacs']:.1f}", f"{r['flop_ratio']:.2f}", f"{r['speedup']:.2f}",
                 f"{r['speedup_vs_flop_ratio']:.2f}"] for r in bench["results"]]
        mach = bench["machine"]
        parts.append(f"<h2>Speed</h2><p class='note'>{mach['cpus']} CPUs ({html.escape(mach['processor'])}), "
                     f"{mach['threads']} threads, {bench['repeats']} interleaved repeats, median latency.</p>"
                     + _table(["backend", "batch", "setting", "ms", "img/s", "GMACs", "FLOP ratio", "speed-up",
                               "speed-up / FLOP ratio"], rows))
        for r in bench["results"]:
            if r["threshold"] is not None and abs(r["threshold"] - 0.88) < 1e-9:
                ok = r["speedup_vs_flop_ratio"] >= 0.9
                parts.append(f"<p>Target at the published threshold 0.88 ({html.escape(r['backend'])}, batch "
                             f"{r['batch']}): measured speed-up {r['speedup']:.2f}x vs 0.9 x FLOP ratio "
                             f"{0.9 * r['flop_ratio']:.2f}: {_ok(ok).replace('PASS', 'MET').replace('FAIL', 'NOT MET')}"
                             "</p>")
        png = export_dir / bench.get("plot", "bench/bench.png")
        if png.exists():
            parts.append(_img(png, "speed-up plot"))
    else:
        parts.append("<h2>Speed</h2><p>No benchmark yet: run <code>algm-export bench DIR</code>.</p>")

    # published numbers
    from algm_export.bench import PUBLISHED

    prow = []
    for k, v in PUBLISHED.items():
        b, a = v["base"], v["algm"]
        prow.append([k, v["crop"], f"{b[0]} / {b[1]} / {b[2]}", f"{a[0]} / {a[1]} / {a[2]}",
                     f"+{100 * (a[1] / b[1] - 1):.0f}%", f"{b[2] / a[2]:.2f}"])
    parts.append("<h2>Published numbers (ADE20K, batch 32 on one GPU)</h2>"
                 + _table(["backbone", "crop", "baseline mIoU / im/s / GFLOPs", "+ALGM mIoU / im/s / GFLOPs",
                           "throughput", "FLOP ratio"], prow))
    if bench:
        ours = [r for r in bench["results"] if r["setting"] != "baseline"]
        if ours:
            best = max(ours, key=lambda r: r["speedup"])
            parts.append(f"<p>Ours ({bench['backbone']}, random weights, so no mIoU): best measured speed-up "
                         f"{best['speedup']:.2f}x at {best['setting']} ({best['backend']}, batch {best['batch']}) "
                         f"for a FLOP ratio of {best['flop_ratio']:.2f} "
                         f"({100 * best['speedup_vs_flop_ratio']:.0f}% of the ideal).</p>")

    # merge pictures
    try:
        pics = merge_pictures(export_dir, man, out_dir, n_images, model, trust_checkpoint)
        parts.append("<h2>What was merged</h2><p class='note'>Each panel colours the groups of patches that became "
                     "one token: CLAP windows, then GBM groups. Plain patches were kept.</p><div class='grid'>")
        parts += [_img(p, p.stem) for p in pics]
        parts.append("</div>")
    except Exception as e:  # noqa: BLE001
        parts.append(f"<h2>What was merged</h2><p class='fail'>pictures failed: {html.escape(str(e))}</p>")
    parts.append("</body></html>")
    page = out_dir / "index.html"
    from algm_export.manifest import atomic_path

    with atomic_path(page) as tmp:
        tmp.write_text("\n".join(parts))
    return page
