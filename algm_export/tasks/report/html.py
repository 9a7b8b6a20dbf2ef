"""`algm-export report DIR`: one self-contained HTML page (PNGs embedded, and written beside it).

What a deployment engineer reads, first to last:

1. What each setting does: one sentence per setting (what it saves, what it costs, the parity
   verdict), and how batches behave in dynamic token mode (`words`).
2. Charts (`charts`): speed-up against tokens kept per backend and batch size with the ideal;
   speed-up against agreement with the baseline (or mIoU with labels), one point per setting;
   tokens per image in dynamic token mode.
3. What merging does to the segmentation (`pictures`): one row per sample photo: the input, the
   baseline's segmentation, and per setting its segmentation with its token groups and the
   pixels whose class changed; static and dynamic of the same threshold side by side.
4. The details: exported files and engines, parity with PyTorch per backend, the speed table,
   static and dynamic token mode at the published threshold, the published numbers.

Family-agnostic: class count and palette come from the folder's model (`n_cls`), backends and
batch sizes from the benchmark (TensorRT rows when present).
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

#: the project's page on why parity is statistical (merge decisions at float-rounding distance)
SENSITIVITY_DOC = "docs/algorithm.md#numerical-sensitivity"


class _Html(str):
    """Markup we wrote ourselves: `_table` puts it in unescaped (everything else is escaped)."""


_BAD_REPORT = (KeyError, TypeError, ValueError, IndexError, AttributeError)


def _read_json(path: Path, what: str, fix: str, schema=None):
    """The JSON file `path`; with `schema` (the manifest's rules, from `artifacts`), checked against it first: every
    value the report reads has the type it reads it as (ArtifactError naming the first few that do not)."""
    from algm_export.artifacts import schema_errors

    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError) as e:
        raise ArtifactError(f"{path} is not a readable {what} ({type(e).__name__}); {fix}") from None
    if schema is not None:
        errors = schema_errors(data, schema, "")
        if errors:
            more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
            raise ArtifactError(f"{path} is not a {what} of algm-export: {'; '.join(errors[:3])}{more}; {fix}")
    return data


def _schemas():
    """(bench.json, validation report) schemas: the keys the report reads, with their types."""
    from algm_export.artifacts import BOOL, COUNT, DICT, NUM, SIZE, STR, ListOf, Nullable, Rule

    pos = Rule("a positive finite number", "positive finite numbers", lambda v: NUM.ok(v) and v > 0)
    tokens = {"mean": (ListOf(NUM, min_length=1), True), "min": (ListOf(NUM, min_length=1), True),
              "max": (ListOf(NUM, min_length=1), True), "images": (COUNT, False)}
    row = {"backend": (STR, True), "batch": (SIZE, True), "setting": (STR, True), "threshold": (Nullable(NUM), False),
           "token_mode": (Nullable(STR), False), "threshold_input": (BOOL, False),
           "capacities": (Nullable(ListOf(COUNT)), False), "tokens": (Nullable(tokens), False),
           "tokens_kept": (Nullable(ListOf(NUM)), False), "latency_ms": (NUM, True), "images_per_s": (NUM, True),
           "gmacs": (pos, True), "flop_ratio": (NUM, True), "speedup": (NUM, True),
           "speedup_vs_flop_ratio": (NUM, True), "gmacs_at_batch_max": (pos, False),
           "concurrency": (Nullable(COUNT), False)}
    bench = {"results": (ListOf(row), True), "machine": (DICT, True), "backbone": (STR, False),
             "image_size": (ListOf(SIZE, 2), False)}
    summary = {"max_abs": (NUM, True), "mean_abs": (NUM, True), "agreement_mean": (NUM, True),
               "agreement_min": (NUM, True), "parity_miou": (NUM, True), "pass": (BOOL, True), "images": (COUNT, True),
               "tokens_mean": (ListOf(NUM), False), "token_mismatch_images": (COUNT, False),
               "miou_backend": (NUM, False), "miou_torch": (NUM, False)}
    entry = {"name": (STR, True), "threshold": (Nullable(NUM), False), "threshold_input": (BOOL, False),
             "summary": (summary, True), "per_image": (ListOf({"tokens": (ListOf(NUM), False)}), False)}
    validation = {"backend": (STR, True), "precision": (STR, True), "images": (ListOf(STR), True),
                  "entries": (ListOf(entry), True)}
    return bench, validation


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1200px;color:#222;
padding:0 1em;line-height:1.45}
p,li,figcaption,h1,h2,h3{overflow-wrap:anywhere}
h1{font-size:1.6em;margin-bottom:.2em} h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em;max-width:100%}
th,td{border:1px solid #ccc;padding:.3em .5em;text-align:right;vertical-align:top;overflow-wrap:break-word}
th{background:#f3f3f3} td:first-child,th:first-child{text-align:left}
.pass{color:#0a7d27;font-weight:600}.fail{color:#b00020;font-weight:600}.note{color:#444;font-size:.92em}
img{max-width:100%;margin:.3em 0} .charts{display:grid;grid-template-columns:repeat(auto-fit,minmax(480px,1fr));gap:1em}
.charts figure{margin:0;border:1px solid #ddd;padding:.4em} figcaption{font-size:.9em;color:#333}
code{background:#f5f5f5;padding:.1em .3em} ul.settings li{margin:.45em 0}
table.pics{table-layout:fixed;width:100%;font-size:.88em} table.pics th{text-align:center;font-weight:600;
line-height:1.3;vertical-align:bottom} table.pics td{text-align:center;padding:.25em} table.pics img{width:100%;
display:block;margin:0 0 .2em 0} table.pics .cap{font-size:.9em;color:#333}
.key{display:inline-block;width:.9em;height:.9em;vertical-align:-.1em;border:1px solid #444}
"""


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _table(head, rows, cls=None) -> str:
    c = f' class="{cls}"' if cls else ""
    out = [f"<table{c}>", "<tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in head) + "</tr>"]
    for r in rows:
        out.append("<tr>" + "".join(f"<td>{c if isinstance(c, _Html) else html.escape(str(c))}</td>" for c in r)
                   + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def _ok(b: bool, yes: str = "PASS", no: str = "FAIL") -> str:
    return _Html(f'<span class="pass">{yes}</span>' if b is True else f'<span class="fail">{no}</span>')


def _gmacs(v: float) -> str:
    return f"{v:.3g}"


def _validation_reports(folder: ExportFolder) -> list[tuple[Path, dict]]:
    """[(file, report)] of DIR/validation/report.*.json (files written by `validate`)."""
    fix = "run `algm-export validate DIR` again (or delete the file)"
    schema = _schemas()[1]
    return [(f, _read_json(f, "validation report", fix, schema))
            for f in sorted(folder.resolve("validation", "validation folder").glob("report.*.json"))]


def _validation_parts(reports: list[tuple[Path, dict]]) -> list[str]:
    """The parity section."""
    if not reports:
        return ["<h2>Parity with PyTorch</h2><p>No validation yet: run <code>algm-export validate DIR</code>.</p>"]
    parts = ["<h2>Parity with PyTorch</h2><p class='note'>Each backend's output against PyTorch running the same "
             "setting in the same token mode. Parity is statistical: a merge decision whose similarity sits within "
             "float rounding of the threshold may go the other way on another backend; such flips are counted "
             f"below. Why, and what limits apply: <a href='{SENSITIVITY_DOC}'>numerical sensitivity</a> in the "
             "project's documentation (docs/algorithm.md).</p>"]
    fix = "run `algm-export validate DIR` again (or delete the file)"
    for f, rep in reports:
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
    if e.get("threshold_input") and e.get("threshold") is not None:
        return f"{e['name']} @{e['threshold']:.3f}"
    return str(e["name"])


def _token_match(s: dict) -> str:
    """Dynamic entries: images whose token counts equal PyTorch's, of all."""
    if "token_mismatch_images" not in s:
        return "-"
    return f"{s['images'] - s['token_mismatch_images']}/{s['images']}"


def _batch_cell(r: dict) -> str:
    """A bench row's batch size; a served row (Triton): `cN`, N concurrent clients of one image each."""
    return f"c{r['concurrency']}" if r.get("concurrency") else str(r["batch"])


def _is_dynamic(r: dict) -> bool:
    return r.get("token_mode") == "dynamic"


def _at(r: dict, t: float = COMPARE_AT) -> bool:
    return r.get("threshold") is not None and abs(float(r["threshold"]) - t) < 1e-9


def _validation_index(reports: list[tuple[Path, dict]]) -> dict:
    """{(backend, setting, threshold): summary} of the validation reports."""
    out = {}
    for _, rep in reports:
        try:
            for e in rep["entries"]:
                out[(rep["backend"], e["name"], round(float(e.get("threshold") or 0), 6))] = e["summary"]
        except _BAD_REPORT:
            continue
    return out


def _label_miou(reports: list[tuple[Path, dict]], results: list[dict]) -> dict:
    """{(setting, threshold or None): mIoU % of the backend with labels}, from the first validation report
    that has labels (`validate --labels`)."""
    for _, rep in reports:
        out = {}
        for e in rep.get("entries", []):
            s = e.get("summary", {})
            if "miou_backend" in s:
                t = None if e["name"] == "baseline" or e.get("threshold") is None else round(float(e["threshold"]), 6)
                out[(e["name"], t)] = float(s["miou_backend"])
        if out:
            return out
    return {}


def _modes_part(folder: ExportFolder, bench: Optional[dict], reports) -> list[str]:
    """Static and dynamic token mode side by side at the published threshold (`COMPARE_AT`): parity
    with PyTorch, tokens per image, FLOP ratio and measured speed-up; only for a folder that has both."""
    from algm_export.tasks.report.words import at_batch_max

    entries = folder.settings
    static = [e for e in entries if not e.is_dynamic and abs(e.threshold - COMPARE_AT) < 1e-9]
    dynamic = [e for e in entries if e.is_dynamic and any(abs(t - COMPARE_AT) < 1e-9 for t in e.thresholds)]
    if not static or not dynamic:
        return []
    names = {e.name for e in static + dynamic}
    parity = _validation_index(reports)
    results = (bench or {}).get("results", [])
    rows = []
    for r in results:
        if r["setting"] not in names or not _at(r):
            continue
        s = parity.get((r["backend"], r["setting"], round(COMPARE_AT, 6)))
        par = "-" if s is None else _Html(f"{s['agreement_mean']:.3f} % / {s['max_abs']:.1e} " + _ok(s["pass"]))
        b = at_batch_max(r, results)
        rows.append(["dynamic" if _is_dynamic(r) else "static", r["setting"], r["backend"], _batch_cell(r), par,
                     "-" if s is None else _token_match(s), tokens_text(r.get("tokens"), _is_dynamic(r)),
                     _gmacs(r["gmacs"]), f"{r['flop_ratio']:.2f}" + ("" if b is None or r["batch"] == 1
                                                                     else f" (batch: {b:.2f})"),
                     f"{r['speedup']:.2f}", f"{r['speedup_vs_flop_ratio']:.2f}"])
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
            "multiply-adds over their mean per image; at batch sizes above 1, in brackets, the ratio when every "
            "batch is computed at its largest image's count). Parity: mean argmax agreement / max |logit "
            "difference| against PyTorch in the same token mode.</p>"
            + _table(["mode", "setting", "backend", "batch", "parity", "token counts = PyTorch",
                      "tokens per image", "GMACs", "FLOP ratio", "speed-up", "speed-up / FLOP ratio"], rows)]


def _bench_parts(bench: dict, builtin: bool) -> tuple[list[str], list[str]]:
    """The speed table and the line under the published numbers, from DIR/bench/bench.json."""
    from algm_export.tasks.report.words import at_batch_max
    from algm_export.tasks.visualize import series_label

    esc = lambda v: html.escape(str(v))  # noqa: E731
    results = bench["results"]
    per_batch = any(r.get("token_mode") == "dynamic" and int(r["batch"]) > 1 for r in results)
    rows = []
    for r in results:
        b = at_batch_max(r, results)
        row = [r["backend"], _batch_cell(r), _entry_label(r) if r.get("threshold_input") else r["setting"],
               f"{r['latency_ms']:.1f}", f"{r['images_per_s']:.2f}", tokens_text(r.get("tokens"), _is_dynamic(r)),
               _gmacs(r["gmacs"]), f"{r['flop_ratio']:.2f}"]
        if per_batch:
            row.append("-" if b is None or int(r["batch"]) == 1 else f"{b:.2f}")
        rows.append(row + [f"{r['speedup']:.2f}", f"{r['speedup_vs_flop_ratio']:.2f}"])
    head = ["backend", "batch", "setting", "ms", "img/s", "tokens per image", "GMACs", "FLOP ratio"] + (
        ["FLOP ratio per batch"] if per_batch else []) + ["speed-up", "speed-up / FLOP ratio"]
    mach = bench["machine"]
    note = (f"{esc(mach.get('cpus', '?'))} CPUs ({esc(mach.get('processor', ''))}), {esc(mach.get('threads', ''))} threads, "
            f"{esc(bench.get('repeats', ''))} interleaved repeats, median latency. FLOP ratio: the baseline's "
            "multiply-adds over the setting's (per image); speed-up: the baseline's latency over the setting's, "
            "same backend and batch size.")
    if any(r.get("concurrency") for r in results):
        note += (" Rows with batch cN: served (Triton), N concurrent clients sending one image per request; "
                 "img/s is the served throughput, ms the request latency, and the speed-up is relative to the "
                 "baseline served at the same concurrency.")
    if per_batch:
        note += (" FLOP ratio per batch (dynamic token mode): what a batch can save when it is computed at its "
                 "largest image's token count.")
    parts = [f"<h2>Speed</h2><p class='note'>{note}</p>" + _table(head, rows)]
    ours = [r for r in results if r["setting"] != "baseline"]
    tail = []
    if ours:
        best = max(ours, key=lambda r: r["speedup"])
        weights = ", seeded random weights" if builtin else ""
        tail.append(f"<p>This export ({esc(bench.get('backbone', ''))}{weights}): best measured speed-up "
                    f"{best['speedup']:.2f}x at {esc(best['setting'])} ({esc(series_label(best))}) for a FLOP ratio "
                    f"of {best['flop_ratio']:.2f} "
                    f"({100 * best['speedup_vs_flop_ratio']:.0f}% of the ideal).</p>")
    return parts, tail


def _model_for_pictures(folder: ExportFolder, trust_checkpoint: bool):
    """The export's model for the merge pictures; None when its checkpoint is not on this machine
    (the page is written without pictures). A checkpoint that changed or is refused stops the report."""
    src = folder.model_info["source"]
    if not src.startswith("builtin:") and not Path(src).exists():
        return None
    return folder.model(trust_checkpoint)


def _pictures_part(cols, rows, model_info: dict, n_cls: int) -> str:
    """The pictures section: one table, a column per setting, a row per photo."""
    esc = html.escape
    head = ["<th>input</th>", "<th>baseline<br>(no merging)</th>"]
    for c in cols:
        head.append("<th>" + "<br>".join(esc(x) for x in c.header) + "</th>")
    body = []
    for r in rows:
        tds = [f"<td>{_img(r.input, f'{r.photo}: input')}<div class='cap'>{esc(r.photo)}</div></td>",
               f"<td>{_img(r.baseline, f'{r.photo}: baseline segmentation')}<div class='cap'>baseline</div></td>"]
        for c, cell in zip(cols, r.cells):
            what = f"{r.photo}, threshold {c.threshold:.2f} {c.token_mode}"
            tds.append(f"<td>{_img(cell.seg, what + ': segmentation and token groups')}"
                       f"{_img(cell.changed, what + ': pixels whose class changed')}"
                       f"<div class='cap'>{esc(_tokens_caption(c, cell.tokens))}<br>"
                       f"{cell.changed_pct:.1f} % changed</div></td>")
        body.append("<tr>" + "".join(tds) + "</tr>")
    layers = cols[0].layers if cols else []
    return ("<h2>What merging does to the segmentation</h2><p class='note'>One row per photo, in PyTorch. "
            f"Colours are the model's {n_cls} classes. In each setting's column, top: its segmentation with its "
            "token groups outlined: <b>black</b>, the CLAP windows merged at the first ALGM layer"
            + (f" ({layers[0]})" if layers else "") + "; <b>white</b>, the groups the later GBM steps formed "
            "(patches without an outline stayed tokens of their own). Bottom: the pixels whose class differs "
            "from the baseline's, <span class='key' style='background:rgb(213,94,0)'></span> on the faded photo. "
            "Under it: the tokens this image kept after each merge step (static: the token groups, in the slots every image computes), and the share of pixels that changed.</p>"
            "<table class='pics'><tr>" + "".join(head) + "</tr>" + "".join(body) + "</table>")


def _tokens_caption(col, tokens) -> str:
    """Under a picture: the token groups this image formed after each step; static: in the slots its
    capacities give every image (the remaining slots are computed too)."""
    got = " / ".join(map(str, tokens))
    if col.capacities:
        return f"{got} groups in {' / '.join(map(str, col.capacities))} slots"
    return f"{got} tokens"


def _figure(path: Optional[Path], alt: str, caption: str) -> str:
    if path is None:
        return ""
    return f"<figure>{_img(path, alt)}<figcaption>{html.escape(caption)}</figcaption></figure>"


@locks_export_folder("report")
def write_report(export_dir, out: Optional[str] = None, n_images: int = 3, model=None,
                 trust_checkpoint: bool = False) -> Path:
    """Write the HTML report (DIR/report/index.html, or OUT/index.html); returns its path.

    Every value taken from the folder's files is escaped; paths in them are resolved inside DIR.
    trust_checkpoint: see `load_segmenter`; wait: see `algm_export.core.lock`."""
    import warnings

    from algm_export.tasks.report import charts, pictures, words
    from algm_export.tasks.visualize import speed_chart

    folder = ExportFolder.load(export_dir)
    man = folder.data
    m = man["model"]
    out_dir = Path(out) if out else folder.resolve("report", "report folder")
    bj = folder.resolve("bench/bench.json", "bench report")
    bench = _read_json(bj, "benchmark report", "run `algm-export bench DIR` again (or delete the file)",
                       _schemas()[0]) if bj.is_file() else None
    results = bench["results"] if bench else []
    reports = _validation_reports(folder)
    validation = _validation_parts(reports)
    if model is None:
        model = _model_for_pictures(folder, trust_checkpoint)
    builtin = str(m.get("source", "")).startswith("builtin:")
    speed, ours = _bench_parts(bench, builtin) if bench else (
        ["<h2>Speed</h2><p>No benchmark yet: run <code>algm-export bench DIR</code>.</p>"], [])
    out_dir.mkdir(parents=True, exist_ok=True)
    grid = m.get("grid") or [1, 1]
    n_patches = int(grid[0]) * int(grid[1])
    n_cls = int(m.get("n_cls") or getattr(getattr(model, "cfg", None), "n_cls", 0) or 0)
    esc = lambda v: html.escape(str(v))  # noqa: E731

    # pictures first: their runs also measure each setting's agreement with the baseline
    cols, rows, pic_error = [], [], None
    try:
        if n_images < 1:
            pass
        elif model is None:
            raise FileNotFoundError(f"the checkpoint {m['source']} is not on this machine")
        else:
            cols, rows = pictures.run_pictures(folder, out_dir, model, n_images)
    except Exception as e:  # noqa: BLE001  (the page is still worth having without the pictures)
        warnings.warn(f"merge pictures skipped: {e}")
        pic_error = str(e)
    agreement = pictures.agreement_with_baseline(cols, rows) if rows else {}
    if agreement:
        agreement[("baseline", None)] = 100.0
    labels = _label_miou(reports, results)

    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'>"
             f"<meta name='viewport' content='width=device-width, initial-scale=1'><title>algm-export report</title>"
             f"<style>{CSS}</style></head><body>",
             f"<h1>algm-export report</h1><p class='note'>{esc(m.get('family', 'segmenter'))} &middot; "
             f"{esc(m['source'])} &middot; {esc(m['backbone'])} + {esc(m['decoder'])} decoder &middot; "
             f"{m['image_size'][0]}x{m['image_size'][1]} &middot; {n_cls} classes &middot; {n_patches} patches "
             f"&middot; created {esc(man.get('created', ''))}</p>"]

    # 1. words
    settings = [(c.name, c.threshold, c.layers, c.token_mode) for c in cols] or [
        (e.name, t, list(e.layers), e.token_mode) for e in folder.settings for t in e.thresholds]
    sentences = words.setting_sentences(settings, results, [r for _, r in reports], n_patches, agreement, labels,
                                        len(rows))
    parts.append("<h2>What each setting does</h2><ul class='settings'>"
                 + "".join(f"<li><b>{esc(n.capitalize())}</b>: {esc(s)}</li>" for n, s in sentences) + "</ul>")
    note = words.batch_note(results)
    if note:
        parts.append(f"<p>{esc(note)}</p>")

    # 2. charts
    figs = []
    if results:
        title = f"{m['backbone']} {m['image_size'][0]}x{m['image_size'][1]}"
        try:
            figs.append(_figure(speed_chart(results, out_dir / "chart_speed.png", title), "speed-up chart",
                                "Speed-up against tokens kept after the last merge, per backend and batch size. "
                                "Dashed: the ideal, where the speed-up equals the FLOP ratio."))
            if labels:
                cost, ylab, what = labels, "mIoU on the labelled images (%)", "mIoU with labels"
            else:
                cost, ylab, what = agreement, "pixels agreeing with the baseline (%)", (
                    f"the share of pixels whose class equals the baseline's, on {len(rows)} sample "
                    f"photo{'s' if len(rows) != 1 else ''}")
            figs.append(_figure(charts.operating_point_chart(results, cost, ylab, out_dir / "chart_tradeoff.png",
                                                             title) if cost else None, "trade-off chart",
                                f"The operating-point choice: speed-up (smallest batch) against {what}, one "
                                "point per setting. Up and right is better."))
        except Exception as e:  # noqa: BLE001  (numbers matter more than a chart)
            warnings.warn(f"charts skipped: {e}")
            figs.append(f"<p class='fail'>charts failed: {esc(e)}</p>")
    counts, caps = _dynamic_counts(folder, reports, cols, rows)
    if counts:
        try:
            figs.append(_figure(charts.token_histogram(counts, n_patches, out_dir / "chart_tokens.png", caps),
                                "tokens per image histogram",
                                "Dynamic token mode: the tokens each image keeps after the last merge; dashed, the "
                                "static capacity of the same threshold, which every image pays for."))
        except Exception as e:  # noqa: BLE001
            warnings.warn(f"token histogram skipped: {e}")
    if figs:
        parts.append("<h2>Speed and what it costs</h2><div class='charts'>" + "".join(figs) + "</div>")

    # 3. pictures
    if pic_error is None and rows:
        parts.append(_pictures_part(cols, rows, m, n_cls))
    elif pic_error is not None:
        parts.append(f"<h2>What merging does to the segmentation</h2><p class='fail'>pictures failed: "
                     f"{esc(pic_error)}</p>")
    else:
        parts.append("<h2>What merging does to the segmentation</h2><p>No pictures asked for "
                     "(<code>--merge-pictures 0</code>).</p>")

    # 4. details
    ex = [["baseline", "-", "-", "-", man["baseline"]["onnx"], man["baseline"]["sha256"][:12]]]
    for e in folder.settings:
        tau = (" / ".join(f"{t:.3f}" for t in e.thresholds) + " (input)") if e.takes_threshold else f"{e.threshold:.3f}"
        capacities = "dynamic" if e.is_dynamic else ",".join(map(str, e.capacities or []))
        ex.append([e.name, tau, ",".join(map(str, e.layers)), capacities, e.raw["onnx"], e.raw["sha256"][:12]])
    parts.append("<h2>Exported models</h2>"
                 + _table(["setting", "threshold", "layers", "capacities", "onnx", "sha256"], ex))
    if man.get("engines"):
        er = [[e["setting"], e["backend"], e.get("backend_version") or "", e["precision"],
               ",".join(map(str, e.get("compute_capabilities") or [])) or "-",
               f"{e.get('build_seconds') or 0:.1f}", Path(e["file"]).name] for e in man["engines"]]
        parts.append("<h3>Engines</h3>"
                     + _table(["setting", "backend", "version", "precision", "SM", "build s", "file"], er))
    parts += validation + speed + _modes_part(folder, bench, reports)
    prow = []
    for k, v in PUBLISHED.items():
        b, a = v["base"], v["algm"]
        prow.append([k, v["crop"], f"{b[0]} / {b[1]} / {b[2]}", f"{a[0]} / {a[1]} / {a[2]}",
                     f"+{100 * (a[1] / b[1] - 1):.0f}%", f"{b[2] / a[2]:.2f}"])
    parts.append("<h2>Published numbers (Segmenter on ADE20K, batch 32 on one GPU)</h2>"
                 + _table(["backbone", "crop", "baseline mIoU / im/s / GFLOPs", "+ALGM mIoU / im/s / GFLOPs",
                           "throughput", "FLOP ratio"], prow))
    parts += ours
    parts.append("</body></html>")
    page = out_dir / "index.html"
    with atomic_path(page) as tmp:
        tmp.write_text("\n".join(parts))
    return page


def _dynamic_counts(folder: ExportFolder, reports, cols, rows) -> tuple[dict, dict]:
    """Per dynamic setting, the tokens each image kept after the last merge: from the validation report
    (PyTorch's counts on the validation images), else from the pictures' photos; and the static
    capacity of the same threshold and layers, where the folder has one."""
    dyn = [(e, t) for e in folder.settings if e.is_dynamic for t in e.thresholds]
    counts: dict = {}
    for e, t in dyn:
        label = f"{t:.2f} dynamic"
        for _, rep in reports:
            for x in rep.get("entries", []):
                if x.get("name") == e.name and abs(float(x.get("threshold") or 0) - t) < 1e-9:
                    vals = [m["tokens"][-1] for m in x.get("per_image", []) if m.get("tokens")]
                    if vals and label not in counts:
                        counts[label] = vals
        if label not in counts and rows:
            from algm_export.tasks.report.pictures import tokens_per_image

            got = tokens_per_image(cols, rows).get((e.name, round(t, 6)))
            if got:
                counts[label] = got
    caps = {}
    for e, t in dyn:
        for s in folder.settings:
            if not s.is_dynamic and s.capacities and abs(s.threshold - t) < 1e-9 and list(s.layers) == list(e.layers):
                caps[f"{t:.2f} static"] = int(s.capacities[-1])
    return counts, caps
