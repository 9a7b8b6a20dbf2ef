"""`algm-export demo`: export, validate, benchmark and report the built-in default model."""

from __future__ import annotations

from algm_export.cli import args as a


def add_parser(sub):
    p = a.command_parser(sub, "demo", help="the whole story on the built-in default model",
                         description="Export Segmenter ViT-S/16 512 (seeded weights) with three threshold settings "
                                     "(static token mode) and the 0.88 one in dynamic token mode too, validate "
                                     "against PyTorch, benchmark side by side, write the HTML report.",
                         example="algm-export demo --out algm-demo")
    p.add_argument("--out", default="algm-demo", help="folder (default: %(default)s)")
    p.add_argument("--model", default="builtin:vit_s16_512", help="model (default: %(default)s)")
    p.add_argument("--thresholds", default="0.85,0.88,0.92", help="(default: %(default)s)")
    p.add_argument("--dynamic-thresholds", default="0.88", metavar="T[,T...]",
                   help="also export these in dynamic token mode, in the same folder ('' for none; "
                        "default: %(default)s)")
    p.add_argument("--repeats", type=int, default=5, help="benchmark repeats (default: %(default)s)")
    a.trust_arg(p)
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    from algm_export.tasks.demo import run_demo, summary_lines
    from algm_export.core.setting import parse_thresholds

    dynamic = parse_thresholds(args.dynamic_thresholds) if args.dynamic_thresholds.strip() else []
    res = run_demo(args.out, args.model, parse_thresholds(args.thresholds), repeats=args.repeats,
                   trust_checkpoint=args.trust_checkpoint, dynamic_thresholds=dynamic)
    print(res["text"])
    print()
    print("\n".join(summary_lines(res)))
    return 0 if all(r["pass"] for r in res["validation"]) else 3
