"""`algm-export demo`: the whole story on a fresh machine, on the built-in default.

Segmenter ViT-S/16 at 512x512 (seeded weights) -> baseline + three threshold settings
exported to ONNX (capacities calibrated on the photos bundled with scikit-image), and the
0.88 setting in dynamic token mode too (`<setting>_dyn`, same folder) -> parity against
PyTorch in ONNX Runtime (and TensorRT when a GPU with TensorRT is present) -> side-by-side
benchmark -> HTML report (a sentence per setting, charts, the segmentation of three photos for
the baseline and every setting; static and dynamic side by side at 0.88). About 6 minutes on 2
CPU cores.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional, Sequence

from algm_export.core.progress import status

DEMO_THRESHOLDS = (0.85, 0.88, 0.92)
DEMO_DYNAMIC = (0.88,)


def run_demo(out: str = "algm-demo", model_spec: str = "builtin:vit_s16_512",
             thresholds: Sequence[float] = DEMO_THRESHOLDS, repeats: int = 5, validate_images: Optional[int] = 6,
             force: bool = True, trust_checkpoint: bool = False,
             dynamic_thresholds: Sequence[float] = DEMO_DYNAMIC) -> dict:
    from algm_export.tasks.bench import bench, format_bench
    from algm_export.export.pipeline import export_folder
    from algm_export.models.registry import resolve_model
    from algm_export.tasks.report.html import write_report
    from algm_export.runtimes.registry import available_backends
    from algm_export.tasks.validate import format_report, validate

    t0 = time.time()
    out = Path(out)
    model = resolve_model(model_spec, trust_checkpoint=trust_checkpoint)
    dyn = f" (and {', '.join(f'{t:.2f}' for t in dynamic_thresholds)} dynamic)" if dynamic_thresholds else ""
    status(f"[1/4] export {model_spec}: baseline + thresholds {', '.join(f'{t:.2f}' for t in thresholds)}{dyn} "
           f"-> {out}")
    man = export_folder(model, model_spec, out, thresholds=list(thresholds), force=force,
                        dynamic_thresholds=list(dynamic_thresholds) or None)
    backends = available_backends()
    reports = []
    for b in [x for x in backends if x != "torch"]:
        status(f"[2/4] validate against PyTorch on {b}")
        reports.append(validate(out, backend=b, limit_images=validate_images, model=model))
    status(f"[3/4] benchmark side by side on {', '.join(backends)}")
    br = bench(out, backends=backends, batches=(1, 4), repeats=repeats, model=model)
    status("[4/4] report")
    page = write_report(out, model=model)
    return {"export": man, "validation": reports, "bench": br, "report": page, "seconds": time.time() - t0,
            "text": "\n\n".join([format_report(r) for r in reports] + [format_bench(br)])}


def summary_lines(res: dict) -> list[str]:
    from algm_export.core.tables import tokens_text

    br = res["bench"]
    lines = []
    for r in br["results"]:
        if r["setting"] == "baseline" or r["backend"] != "onnxruntime":
            continue
        what = (f"tokens per image {tokens_text(r['tokens'], True)}" if r.get("token_mode") == "dynamic"
                else f"capacities {r['capacities']}")
        lines.append(f"  onnxruntime batch {r['batch']} {r['setting']}: {r['speedup']:.2f}x measured vs FLOP ratio "
                     f"{r['flop_ratio']:.2f} ({100 * r['speedup_vs_flop_ratio']:.0f}% of ideal), {what}")
    ok = all(rep["pass"] for rep in res["validation"])
    lines.insert(0, f"parity: {'PASS' if ok else 'FAIL'} on {', '.join(r['backend'] for r in res['validation'])}")
    lines.append(f"report: {res['report']}  ({res['seconds'] / 60:.1f} min)")
    return lines
