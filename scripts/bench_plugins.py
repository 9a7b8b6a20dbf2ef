#!/usr/bin/env python3
"""GPU benchmark of the AlgmClap / AlgmGbm CUDA kernels (plugins/, libalgm_kernels.so).

Prints, at batch 1 (and --batch):
  * CLAP and GBM kernel times on real ViT-S/16 tokens (512x512 input, 1025 tokens, D=384: the
    output of block 1 of timm's vit_small_patch16_224 with img_size=512, random weights);
  * GBM / one torch matmul of the same size ([nA, D] @ [D, nB], the similarity GBM computes);
    target <= 2;
  * (CLAP + GBM) / ViT-S/16 encoder time at 512 (timm, eager, same dtype); target <= 3 %.

Times are CUDA-event medians; "graph" columns replay a CUDA graph (no launch overhead), which
is how a TensorRT engine sees the kernels. Needs a CUDA GPU, torch and timm.

    python scripts/bench_plugins.py [--lib plugins/build/libalgm_kernels.so] [--dtype float16]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from algm_export.tasks.plugins import build_plugins  # noqa: E402
from algm_export.runtimes.plugins import KernelLibrary, find_kernel_library  # noqa: E402


def _kernel_library(path: str | None) -> KernelLibrary:
    if path:
        return KernelLibrary(path)
    try:
        return KernelLibrary(find_kernel_library())
    except Exception:
        major, minor = torch.cuda.get_device_capability()
        build = Path.home() / ".cache" / "algm-export" / f"bench-kernels-sm{major}{minor}"
        print(f"building libalgm_kernels.so for sm_{major}{minor} in {build} ...", flush=True)
        return KernelLibrary(build_plugins(build_dir=build, archs=[major * 10 + minor], plugins=False)["kernels"])


def time_ms(fn, iters: int = 200, warmup: int = 20, graph: bool = False) -> float:
    """Median milliseconds per call of fn() (CUDA events around each call, or a graph replay)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(warmup):
            fn()
        torch.cuda.synchronize()
        run = fn
        if graph:
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g, stream=stream):
                fn()
            run = g.replay
            for _ in range(warmup):
                run()
        times = []
        for _ in range(iters):
            a = torch.cuda.Event(enable_timing=True)
            b = torch.cuda.Event(enable_timing=True)
            a.record(stream)
            run()
            b.record(stream)
            b.synchronize()
            times.append(a.elapsed_time(b))
    torch.cuda.current_stream().wait_stream(stream)
    return statistics.median(times)


def vit_s_tokens_and_encoder(dtype, batch: int):
    import timm

    model = timm.create_model("vit_small_patch16_224", img_size=512, pretrained=False, num_classes=0)
    model = model.cuda().eval().to(dtype)
    img = torch.randn(batch, 3, 512, 512, device="cuda", dtype=dtype)
    captured = {}
    hook = model.blocks[0].register_forward_hook(lambda m, i, o: captured.setdefault("x", o.detach().clone()))
    with torch.inference_mode():
        model.forward_features(img)
    hook.remove()

    def encoder():
        with torch.inference_mode():
            model.forward_features(img)

    return captured["x"].contiguous(), encoder


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lib", help="libalgm_kernels.so (default: plugins/build, else built into ~/.cache)")
    ap.add_argument("--dtype", choices=["float32", "float16"], default=None,
                    help="token dtype (default: both)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--c1", type=int, default=600, help="CLAP capacity (W=256 <= C1 <= 1024)")
    ap.add_argument("--c2", type=int, default=400, help="GBM capacity")
    ap.add_argument("--threshold", type=float, default=0.88)
    ap.add_argument("--iters", type=int, default=200)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA GPU: nothing to benchmark", file=sys.stderr)
        return 1
    lib = _kernel_library(args.lib)
    print(f"GPU: {torch.cuda.get_device_name()}  kernels: {lib.path}")
    gh = gw = 32
    P, C1, C2 = 1, args.c1, args.c2
    dtypes = [args.dtype] if args.dtype else ["float32", "float16"]
    rows = []
    for name in dtypes:
        dtype = getattr(torch, name)
        for batch in sorted({1, args.batch}):
            x, encoder = vit_s_tokens_and_encoder(dtype, batch)
            B, T, D = x.shape
            ws_c = torch.empty(lib.clap_workspace_size(B, gh, gw, 2, 2, P, C1), dtype=torch.uint8, device="cuda")
            ws_g = torch.empty(lib.gbm_workspace_size(B, P + C1, gh * gw, P, C2), dtype=torch.uint8, device="cuda")
            y, size, assign, stats = lib.clap(x, gh, gw, 2, 2, P, C1, args.threshold, workspace=ws_c)

            def clap():
                lib.clap(x, gh, gw, 2, 2, P, C1, args.threshold, workspace=ws_c)

            def gbm():
                lib.gbm(y, size, assign, P, C2, 5.0, workspace=ws_g)

            def both():
                c = lib.clap(x, gh, gw, 2, 2, P, C1, args.threshold, workspace=ws_c)
                lib.gbm(c[0], c[1], c[2], P, C2, 5.0, workspace=ws_g)

            nA, nB = (P + C1 + 1) // 2, (P + C1) // 2
            a = torch.randn(B, nA, D, device="cuda", dtype=dtype)
            bt = torch.randn(B, D, nB, device="cuda", dtype=dtype)

            def matmul():
                torch.matmul(a, bt)

            t = {k: time_ms(f, args.iters) for k, f in
                 (("clap", clap), ("gbm", gbm), ("both", both), ("matmul", matmul))}
            tg = {k: time_ms(f, args.iters, graph=True) for k, f in
                  (("clap", clap), ("gbm", gbm), ("both", both), ("matmul", matmul))}
            enc = time_ms(encoder, max(20, args.iters // 4))
            enc_g = time_ms(encoder, max(20, args.iters // 4), graph=True)
            st = stats.tolist()
            rows.append((name, batch, t, tg, enc, enc_g, st))
            print(f"\n== {name} batch {batch}: tokens [{B}, {T}, {D}], C1={C1}, C2={C2}, tau={args.threshold}, "
                  f"CLAP stats (merged, forced) {st[0]}")
            print(f"{'':24s}{'eager ms':>10s}{'graph ms':>10s}")
            for k, label in (("clap", "CLAP kernels"), ("gbm", "GBM kernels"), ("both", "CLAP + GBM"),
                             ("matmul", f"torch matmul {nA}x{D}x{nB}")):
                print(f"{label:24s}{t[k]:10.4f}{tg[k]:10.4f}")
            print(f"{'ViT-S/16 512 encoder':24s}{enc:10.4f}{enc_g:10.4f}")
            print(f"GBM / matmul            {t['gbm'] / t['matmul']:10.2f}{tg['gbm'] / tg['matmul']:10.2f}   (target <= 2)")
            print(f"(CLAP+GBM) / encoder    {100 * t['both'] / enc:9.2f}%{100 * tg['both'] / enc_g:9.2f}%   (target <= 3 %)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
