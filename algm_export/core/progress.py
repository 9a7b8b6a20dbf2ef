"""Progress bars, status lines and stages on stderr (quiet when ALGM_QUIET=1).

`stage(name)` marks one step of a long command (loading, calibration, export of one entry,
validation of one entry): with ALGM_PROFILE_MEMORY=1 it also prints the step's wall time and its
peak resident memory (Linux: the high-water mark is reset at the start of the stage through
/proc/self/clear_refs, so each stage reports its own peak), the measurement behind the memory
table of docs/performance.md (`scripts/measure_memory.py`).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from typing import Iterator, Optional

from tqdm.auto import tqdm


def quiet() -> bool:
    return os.environ.get("ALGM_QUIET") == "1"


def profiling_memory() -> bool:
    return os.environ.get("ALGM_PROFILE_MEMORY") == "1"


def progress_bar(total=None, desc="", unit="it", iterable=None, leave=True):
    """A tqdm bar on stderr: count, rate and ETA (remaining time from the rate so far)."""
    return tqdm(iterable=iterable, total=total, desc=desc, unit=unit, file=sys.stderr, disable=quiet(),
                leave=leave, dynamic_ncols=True)


def status(msg: str) -> None:
    if not quiet():
        tqdm.write(f"  {msg}", file=sys.stderr)


def _status_kib(key: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def peak_rss_bytes() -> Optional[int]:
    """The process's resident high-water mark (VmHWM) since start or the last `reset_peak_rss`."""
    kib = _status_kib("VmHWM")
    return None if kib is None else kib * 1024


def rss_bytes() -> Optional[int]:
    kib = _status_kib("VmRSS")
    return None if kib is None else kib * 1024


def release_memory() -> None:
    """Collect garbage and hand freed heap memory back to the system (glibc `malloc_trim`), so that
    a closed session's weights do not stay resident while the next large allocation comes from
    elsewhere (a model's weights loaded after a backend's were freed)."""
    import gc

    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


#: (stage, seconds, peak RSS bytes or None) of every finished stage, when profiling memory
STAGES: list[tuple[str, float, Optional[int]]] = []
_peak_seen = 0
_open: list[int] = []   # the running peak of every stage still open (stages nest)


def overall_peak_rss() -> Optional[int]:
    """The process's peak resident memory since it started, across the resets of `stage`."""
    now = peak_rss_bytes()
    return None if now is None else max(now, _peak_seen)


def _fold(peak: int) -> None:
    global _peak_seen
    _peak_seen = max(_peak_seen, peak)
    for i in range(len(_open)):
        _open[i] = max(_open[i], peak)


@contextlib.contextmanager
def stage(name: str, announce: bool = True) -> Iterator[None]:
    """One step of a command: a status line when it starts (unless not `announce`); with
    ALGM_PROFILE_MEMORY=1 also its time and peak resident memory when it ends (recorded in
    `STAGES`; stages nest, an outer stage's peak includes its inner ones')."""
    if announce:
        status(name)
    prof = profiling_memory()
    if prof:
        _fold(peak_rss_bytes() or 0)
        reset_peak_rss()
        _open.append(0)
    t0 = time.perf_counter()
    try:
        yield
    finally:
        if prof:
            dt = time.perf_counter() - t0
            peak = max(_open.pop(), peak_rss_bytes() or 0)
            _fold(peak)
            STAGES.append((name, dt, peak))
            print(f"[memory] {name}: {dt:.1f} s, peak RSS {peak / 2**30:.2f} GiB", file=sys.stderr, flush=True)
