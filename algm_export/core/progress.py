"""Progress bars and status lines on stderr (quiet when ALGM_QUIET=1 or not a terminal in CI)."""

from __future__ import annotations

import os
import sys

from tqdm.auto import tqdm


def quiet() -> bool:
    return os.environ.get("ALGM_QUIET") == "1"


def progress_bar(total=None, desc="", unit="it", iterable=None, leave=True):
    return tqdm(iterable=iterable, total=total, desc=desc, unit=unit, file=sys.stderr, disable=quiet(),
                leave=leave, dynamic_ncols=True)


def status(msg: str) -> None:
    if not quiet():
        tqdm.write(f"  {msg}", file=sys.stderr)
