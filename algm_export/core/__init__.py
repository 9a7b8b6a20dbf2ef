"""The core layer: what every other layer may use and which itself imports nothing of the package.

errors (the `AlgmError` family and exit codes), manifest (the export folder's file format,
sha256, atomic writes, containment), lock (one writer per folder), tables, progress, published
(the paper's numbers), names (constants shared by several layers).
"""
