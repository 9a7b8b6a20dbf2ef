"""Reading checkpoint files without running code from them (issue "Untrusted artifacts").

Every checkpoint format goes through `load_checkpoint_file`. It always unpickles with
``torch.load(weights_only=True)``, which builds tensors, containers and plain values and
refuses any other global; the only globals added for it are the data types that training
checkpoints hold beside the weights (`SAFE_TYPES`), scoped to this one load
(``torch.serialization.safe_globals``), never registered process-wide:

* numpy scalars (``np.float64(0.5)`` in a scheduler state), arrays and their dtypes, under
  the names numpy 2 and numpy 1 pickle them with;
* ``datetime`` values (timestamps in ``meta`` dicts of other training frameworks).

Model, optimizer, LR-scheduler and GradScaler state dicts, epochs and ``n_cls`` need nothing
else (``collections.OrderedDict``, tensors, numbers, strings, lists, tuples, sets and dicts are
what ``weights_only`` loads by itself). Anything else is refused with a `CheckpointError` that
names the refused types; ``trust=True`` (the CLI's ``--trust-checkpoint``) is the one way to
unpickle arbitrary objects, which can run any code the file's author chose.
"""

from __future__ import annotations

import contextlib
import datetime
import pickle
import re
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from algm_export.core.errors import CheckpointError

TRUST_HINT = "--trust-checkpoint (Python: trust_checkpoint=True)"

_DTYPE_NAMES = ("Bool", "Int8", "UInt8", "Int16", "UInt16", "Int32", "UInt32", "Int64", "UInt64",
                "Float16", "Float32", "Float64", "LongDouble", "Complex64", "Complex128", "CLongDouble",
                "Str", "Bytes", "Object", "DateTime64", "TimeDelta64")


def safe_types() -> list:
    """The allow-list beside what ``weights_only`` accepts by itself: (object, pickled name) pairs."""
    try:
        from numpy._core import multiarray as ma  # numpy >= 2; numpy 1 pickles say numpy.core
    except ImportError:  # numpy 1
        from numpy.core import multiarray as ma

    out: list = [np.ndarray, np.dtype, datetime.datetime, datetime.date, datetime.time,
                 datetime.timedelta, datetime.timezone]
    for mod in ("numpy._core.multiarray", "numpy.core.multiarray"):
        out += [(ma.scalar, f"{mod}.scalar"), (ma._reconstruct, f"{mod}._reconstruct")]
    out += [getattr(np.dtypes, f"{n}DType") for n in _DTYPE_NAMES if hasattr(np.dtypes, f"{n}DType")]
    return out


@contextlib.contextmanager
def _allowed(types: list) -> Iterator[None]:
    ts = torch.serialization
    if hasattr(ts, "safe_globals"):           # torch >= 2.5: scoped to this load
        with ts.safe_globals(types):
            yield
        return
    plain = [t for t in types if not isinstance(t, tuple)]   # torch 2.4: no scope, no aliases
    before = list(ts.get_safe_globals())
    ts.add_safe_globals(plain)
    try:
        yield
    finally:
        ts.clear_safe_globals()
        ts.add_safe_globals(before)


_REFUSED = (
    re.compile(r"GLOBAL ([\w.]+) (?:was not an allowed global|whose module)"),
    re.compile(r"[Uu]nsupported global: GLOBAL ([\w.]+)"),
    re.compile(r"but got <class '([\w.]+)'>"),
)


def refused_types(message: str) -> list[str]:
    """The globals / types a weights-only load refused, read from torch's message."""
    found: list[str] = []
    for pat in _REFUSED:
        for name in pat.findall(message):
            if name not in found:
                found.append(name)
    return found


def _unsafe_globals(path: Path) -> list[str]:
    """Every global the file names that the allow-list lacks (the file is scanned, not run)."""
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except Exception:  # noqa: BLE001  (a scan that fails just gives no list)
        return []


def _torch_reason(message: str) -> str:
    """The part of a torch.load message that describes the file (not torch's advice to unpickle it)."""
    m = re.search(r"WeightsUnpickler error:(.*?)(?:Check the documentation|$)", message, re.S)
    return m.group(1) if m else message


def _corrupt(path: Path, e: BaseException) -> CheckpointError:
    size = path.stat().st_size if path.exists() else 0
    msg = " ".join(_torch_reason(str(e)).split())[:300]
    return CheckpointError(
        f"cannot read checkpoint {path} ({size} bytes): truncated or corrupt ({type(e).__name__}: {msg}); "
        "download or copy the checkpoint again"
    )


def load_checkpoint_file(path: str | Path, trust: bool = False) -> Any:
    """Unpickle a checkpoint file (torch.save format, zip or legacy) onto the CPU.

    trust=False (default): weights-only, plus `safe_types()`; a file that needs anything else is
    refused with a CheckpointError naming the globals it refers to, before any of them is used.
    trust=True: full unpickling; only for files whose origin the caller trusts.
    Raises CheckpointError for a missing, truncated or corrupt file too.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist or is not a file; check the path")
    if trust:
        try:
            return torch.load(path, map_location="cpu", weights_only=False)
        except Exception as e:  # noqa: BLE001  (every way unpickling fails means a bad file here)
            raise _corrupt(path, e) from e
    types = safe_types()
    with _allowed(types):
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            names = _unsafe_globals(path) or refused_types(str(e))
            if not names:
                raise _corrupt(path, e) from e
            first = e
        except Exception as e:  # noqa: BLE001  EOFError, zip errors, OSError: the file itself is bad
            raise _corrupt(path, e) from e
    raise CheckpointError(
        f"checkpoint {path} refers to {', '.join(names)}, which a safe load does not call or construct "
        "(unpickling it can run any code the file's author chose; tensors, numbers, strings, containers, "
        "numpy values and optimizer/scheduler state load without it); if you trust where this file comes "
        f"from, load it with {TRUST_HINT}"
    ) from first


__all__ = ["TRUST_HINT", "load_checkpoint_file", "refused_types", "safe_types"]
