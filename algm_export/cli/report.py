"""`algm-export report`: one self-contained HTML page of an export folder."""

from __future__ import annotations

from algm_export.cli import args as a


def add_parser(sub):
    p = a.command_parser(sub, "report", help="write the HTML report of an export folder",
                         description="One self-contained HTML page: what each setting saves and costs, charts "
                                     "(speed-up, trade-off, tokens per image), the segmentation of sample photos "
                                     "for the baseline and every setting, then parity, speed, the exported files "
                                     "and the published numbers.",
                         example="algm-export report out/vit_s --merge-pictures 3")
    a.export_dir_arg(p)
    p.add_argument("--out", default=None, help="report folder (default: DIR/report)")
    p.add_argument("--merge-pictures", type=int, default=3, metavar="N",
                   help="sample photos to segment and draw merges on (default: %(default)s)")
    a.trust_arg(p)
    a.wait_arg(p)
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    from algm_export.tasks.report.html import write_report

    page = write_report(args.dir, args.out, args.merge_pictures, trust_checkpoint=args.trust_checkpoint,
                        wait=args.wait)
    print(f"report: {page}")
    return 0
