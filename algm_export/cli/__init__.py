"""The `algm-export` command line: one module per command, each `add_parser(sub)` and `run(args) -> int`.

A command module parses options and prints; the work is done by the layers below (`tasks`,
`runtimes`, `artifacts`, ...). A command never imports another command; options used by several
commands live in `args`; `entry` holds `main` (error handling, exit codes). A new command is one
module here plus its name in `NAMES`.
"""

# the order of `algm-export --help`
NAMES = ("demo", "export", "validate", "build", "bench", "report", "predict", "serve", "triton_repo", "plugins",
         "version")

from algm_export.cli.entry import build_parser, main  # noqa: E402  (after NAMES, which entry imports)

__all__ = ["NAMES", "build_parser", "main"]
