"""Triton model names for export folder entries.

A Triton model name is a directory of the model repository and a path segment of the HTTP API:
letters, digits, `_`, `.` and `-` only (PyTriton's rule). An entry's name (`baseline`, `t0.880_l1-5`,
`tin_l1-5_dyn`) is kept where it fits; any other character becomes `_`, a leading `.` too (no hidden
or parent directories), and a name that two entries would share gets `_2`, `_3`, ...
"""

from __future__ import annotations

import re
from typing import Iterable

_REFUSED = re.compile(r"[^A-Za-z0-9_.-]")


def triton_name(name: str) -> str:
    """`name` with every character Triton refuses replaced by `_` (and a leading `.`)."""
    out = _REFUSED.sub("_", str(name))
    if out.startswith("."):
        out = "_" + out[1:]
    return out or "_"


def triton_names(names: Iterable[str]) -> dict[str, str]:
    """{entry name: its Triton model name}, distinct, in the order given."""
    out: dict[str, str] = {}
    taken: set[str] = set()
    for n in names:
        base = cand = triton_name(n)
        k = 2
        while cand in taken:
            cand = f"{base}_{k}"
            k += 1
        taken.add(cand)
        out[n] = cand
    return out
