"""The `algm-export` commands: one module per command, each `add_parser(sub)` and `run(args) -> int`.

A command module parses options and prints; the work is done by the library layers below
(artifacts, runtimes, models, merging, export, and validate/bench/build/predict/report). A
command never imports another command; options used by several commands live in `args`.
"""

# the order of `algm-export --help`
NAMES = ("demo", "export", "validate", "build", "bench", "report", "predict", "plugins", "version")
