"""Peak memory and time of export and validate for checkpoints of growing size (docs/performance.md).

    PYTHONPATH=. .venv/bin/python scripts/measure_memory.py --work /tmp/mem \\
        --model vit_small:512 --model vit_base:512 --model vit_large:640 \\
        --model giant:640:export --model eomt_g:512:export [--thresholds 0.95] [--images DIR]

Each `--model BACKBONE:SIZE[:STEPS]` (STEPS: `export`, or `export+validate`, the default) gets a
published-format checkpoint with seeded random weights in WORK (made once). `vit_*` and `giant`
are Segmenter checkpoints (`checkpoint.pth`, linear decoder; `giant` is a DINOv2-g-sized ViT:
d 1536, 40 blocks, 24 heads, MLP 6144, patch 16, 4.5 GB of float32 weights); `eomt_s`, `eomt_b`,
`eomt_l`, `eomt_g` are EoMT checkpoints as its training code saves them (`pytorch_model.bin` +
`config.yaml`; DINOv2 with 4 registers at patch 16, 100 queries in the last 4 blocks, 150 classes,
the weights a fresh model gets from the published code; `eomt_g`: DINOv2-g, 1.1 B parameters). Then every step runs as its own child process (`algm-export export CKPT
--thresholds T --external-data --out WORK/<model>`, then `algm-export validate WORK/<model>
--images DIR`), and its peak resident memory is read from the kernel's accounting of that child
(`os.wait4`: ru_maxrss, what `/usr/bin/time -v` prints), with its wall time and CPU time. The step
`export-nocal` exports without calibration (`--capacities` 3/4 and 9/16 of the patches), for
models too large to calibrate on the machine at hand.

Peak memory depends on the machine only through allocator behaviour: it is meaningful on a busy
machine. Wall times are not (the CPU time is less sensitive, still not a benchmark).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

GIANT = dict(d_model=1536, n_heads=24, n_layers=40)


def checkpoint_file(ckpt_dir: Path) -> Path:
    """The weights file of a made checkpoint folder (Segmenter's or EoMT's)."""
    eomt = ckpt_dir / "pytorch_model.bin"
    return eomt if eomt.is_file() else ckpt_dir / "checkpoint.pth"


def weights_bytes(ckpt_dir: Path) -> int:
    return checkpoint_file(ckpt_dir).stat().st_size


def make_checkpoint(backbone: str, size: int, out: Path) -> None:
    """Written by a child process (its own peak does not count against the measured steps)."""
    if backbone.startswith("eomt_"):
        code = f"""
from algm_export.models.families.eomt import builtin_eomt, save_eomt
save_eomt(builtin_eomt({backbone[5:]!r}, {size}, 16, 0, init="upstream"), {str(out)!r})
"""
        subprocess.run([sys.executable, "-c", code], check=True)
        return
    code = f"""
import torch
from algm_export.core.setting import AlgmSetting
from algm_export.models.formats.published_segmenter import save_segmenter
backbone, size = {backbone!r}, {size}
if backbone == "giant":
    from algm_export.models.families.segmenter import Segmenter, make_config
    cfg = make_config("vit_large", "linear", size)
    cfg.backbone = "vit_giant_patch16 (DINOv2-g sized)"
    cfg.d_model, cfg.n_heads, cfg.n_layers = {GIANT['d_model']}, {GIANT['n_heads']}, {GIANT['n_layers']}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = Segmenter(cfg).eval()
else:
    from algm_export import create_segmenter
    model = create_segmenter(backbone, "linear", size, n_cls=150, seed=0)
layers = (1, 7) if model.cfg.n_layers >= 24 else (1, 5)
save_segmenter(model, {str(out)!r}, algm=AlgmSetting(0.95 if model.cfg.n_layers >= 24 else 0.88, (2, 2), layers))
"""
    subprocess.run([sys.executable, "-c", code], check=True)


def measured(argv: list[str], log: Path) -> dict:
    """Run argv as a child; its peak RSS (bytes), wall and CPU seconds, exit status."""
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, "ALGM_QUIET": "1"})
        _pid, status, ru = os.wait4(proc.pid, 0)
    return {"peak_bytes": ru.ru_maxrss * 1024, "wall_s": time.perf_counter() - t0,
            "cpu_s": ru.ru_utime + ru.ru_stime, "exit": os.waitstatus_to_exitcode(status)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", required=True)
    ap.add_argument("--model", action="append", required=True, metavar="BACKBONE:SIZE[:STEPS]")
    ap.add_argument("--thresholds", default=None, help="default: the checkpoint's own (0.95 ViT-L/giant, 0.88 others)")
    ap.add_argument("--images", default=None, help="validation images (default: the bundled photos)")
    ap.add_argument("--no-external-data", action="store_true", help="export without --external-data (the old way)")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    cli = [sys.executable, "-m", "algm_export"]
    for spec in args.model:
        parts = spec.split(":")
        backbone, size = parts[0], int(parts[1])
        steps = (parts[2] if len(parts) > 2 else "export+validate").split("+")
        name = f"{backbone}_{size}"
        ck = work / f"ckpt_{name}"
        if not checkpoint_file(ck).is_file():
            make_checkpoint(backbone, size, ck)
        wb = weights_bytes(ck)
        out = work / f"export_{name}"
        for step in steps:
            if step.startswith("export"):
                argv = cli + ["export", str(ck), "--out", str(out), "--force"]
                if args.thresholds:
                    argv += ["--thresholds", args.thresholds]
                if not args.no_external_data:
                    argv.append("--external-data")
                if step == "export-nocal":
                    n = (size // 16) ** 2
                    argv += ["--capacities", f"{n * 3 // 4},{n * 9 // 16}"]
            elif step == "validate":
                argv = cli + ["validate", str(out)] + (["--images", args.images] if args.images else [])
            else:
                raise SystemExit(f"unknown step {step!r}")
            r = measured(argv, work / f"{name}.{step}.log")
            folder = sum(p.stat().st_size for p in out.glob("*") if p.is_file()) if out.is_dir() else 0
            row = {"model": name, "weights_bytes": wb, "step": step, **r, "folder_bytes": folder}
            rows.append(row)
            print(f"{name:14s} {step:14s} weights {wb / 1e9:5.2f} GB  peak {r['peak_bytes'] / 1e9:5.2f} GB "
                  f"({r['peak_bytes'] / wb:4.2f}x)  wall {r['wall_s']:7.1f} s  cpu {r['cpu_s']:7.1f} s  "
                  f"folder {folder / 1e9:5.2f} GB  exit {r['exit']}", flush=True)
    (work / "memory.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
