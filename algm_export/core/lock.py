"""One writer per export folder: an OS file lock on `DIR/.algm-export.lock`.

`export`, `build`, `validate`, `bench` and `report` hold it for their whole run. The lock is
`fcntl.flock` on an open file, so the kernel drops it when the process ends in any way (a killed
run never leaves the folder locked); the file itself stays (removing it would let two runs lock
two different files). While held, it names the holder (`pid N on HOST: COMMAND`) for the message
the next writer gets:

    error: out/ is in use by another algm-export run (pid 4242 on box: export, `algm-export export ...`);
    wait for it to finish and run again, or pass --wait to wait for it

`wait=True` (CLI `--wait`) blocks instead, after one `waiting for ...` line on stderr; a number
waits that many seconds at most. Nested use in one process (e.g. `demo`, or an API caller that
holds the lock around several steps) is re-entrant.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import os
import shlex
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterator, Union

from algm_export.core.errors import ArtifactError, FolderInUse

LOCK_NAME = ".algm-export.lock"

_held: dict[str, int] = {}
_held_guard = threading.Lock()


def lock_path(folder: Union[str, os.PathLike]) -> Path:
    return Path(folder) / LOCK_NAME


def describe_process(op: str) -> str:
    """What the lock file says about its holder."""
    args = list(sys.argv)
    if args and (args[0].endswith(("algm_export/__main__.py", "algm-export")) or args[0] == "-m"):
        args[0] = "algm-export"
    argv = " ".join(shlex.quote(a) for a in args)
    if len(argv) > 300:
        argv = argv[:297] + "..."
    return f"pid {os.getpid()} on {socket.gethostname()}: {op}, `{argv}`"


def _open_lock_file(path: Path) -> int:
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        return os.open(path, flags, 0o666)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise ArtifactError(f"{path} is a symlink; remove it (algm-export creates its own lock file there)") \
                from None
        raise ArtifactError(f"cannot create the lock file {path} ({e.strerror}); algm-export writes into the "
                            "export folder, so make it writable (or work on a copy)") from None


def _holder(fd: int) -> str:
    try:
        text = os.pread(fd, 1000, 0).decode("utf-8", "replace").strip()
    except OSError:
        text = ""
    return text or "a run that is just starting or ending"


def _acquire(fd: int, folder: Path, wait: Union[bool, float]) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return
    except BlockingIOError:
        pass
    holder = _holder(fd)
    if wait is False or wait is None:
        raise FolderInUse(f"{folder} is in use by another algm-export run ({holder}); wait for it to finish "
                          "and run again, or pass --wait to wait for it")
    print(f"waiting for {folder}: in use by another algm-export run ({holder})", file=sys.stderr, flush=True)
    if wait is True:
        fcntl.flock(fd, fcntl.LOCK_EX)
        return
    deadline = time.monotonic() + float(wait)
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise FolderInUse(f"{folder} is still in use by another algm-export run ({_holder(fd)}) after "
                                  f"{float(wait):g} s of waiting; run again when it has finished") from None
            time.sleep(0.1)


@contextlib.contextmanager
def folder_lock(folder: Union[str, os.PathLike], op: str, wait: Union[bool, float] = False) -> Iterator[Path]:
    """Hold the lock of `folder` (which must exist) for the `with` block; yields the lock file."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ArtifactError(f"{folder} is not a folder; give an export folder")
    key = str(folder.resolve())
    path = Path(key) / LOCK_NAME
    with _held_guard:
        if key in _held:
            _held[key] += 1
            nested = True
        else:
            nested = False
    if nested:
        try:
            yield path
        finally:
            with _held_guard:
                _held[key] -= 1
        return
    fd = _open_lock_file(path)
    try:
        _acquire(fd, folder, wait)
        with _held_guard:
            _held[key] = 1
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, (describe_process(op) + "\n").encode(), 0)
            yield path
        finally:
            with _held_guard:
                del _held[key]
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # releases the flock


def export_lock(export_dir: Union[str, os.PathLike], op: str, wait: Union[bool, float] = False):
    """`folder_lock` of an existing export folder (one holding manifest.json); a folder that is not
    one gets the usual error and no lock file."""
    from algm_export.core.manifest import manifest_path

    if not manifest_path(export_dir).is_file():
        raise ArtifactError(f"{manifest_path(export_dir)} does not exist: {export_dir} is not an export folder. "
                            "Run `algm-export export ... --out DIR` first.")
    return folder_lock(export_dir, op, wait)


def locks_export_folder(op: str) -> Callable:
    """Decorator: `fn(export_dir, ...)` runs holding `export_lock(export_dir, op)`; it gains a
    keyword argument `wait` (False: stop with FolderInUse when the folder is held; True: wait;
    a number: wait that many seconds at most)."""

    def deco(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(export_dir, *args, wait: Union[bool, float] = False, **kwargs):
            with export_lock(export_dir, op, wait):
                return fn(export_dir, *args, **kwargs)

        return wrapper

    return deco


__all__ = ["FolderInUse", "LOCK_NAME", "export_lock", "folder_lock", "lock_path", "locks_export_folder"]
