"""ONNX external data, stored once per export folder (`export --external-data`, automatic for large models).

Every entry of a folder (baseline, settings, fp16 and inlined forms) keeps its graph in its own
`.onnx` file and its large tensors in ONE shared data file, `weights.bin`, beside them. The
entries differ only in their merge nodes, so their weights are the same bytes: a tensor is
written once, when its content (sha256) is first seen, and every later tensor with the same
bytes points at the same offset and length. A folder of a ViT-L baseline and three settings holds
its 1.2 GB of weights once instead of four times.

The tensors are written while each graph is built (`WeightStore.externalize`, one tensor at a time,
before the graph is turned into a protobuf), so the exporter never holds a second copy of the
weights. The data file is written under its final name (onnx's checker looks for it there while
each graph is checked); an export that fails removes it (`abort`), and, as for the graphs, only
the manifest written last makes the folder valid: until then the sha256 it lists for the data
file does not match. `finish` returns its manifest record (`{"path", "sha256", "bytes"}`).
Offsets are aligned to 4096 bytes (runtimes may map them).

Readers never trust the locations a graph names: `algm_export.artifacts.external` checks them
(inside the folder, listed in the manifest, sha256) before any parser opens the file.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Optional

from algm_export.core.errors import ArtifactError

DATA_FILE = "weights.bin"
#: tensors smaller than this stay inside the graph (shape constants, biases of small layers): shape
#: inference and the readiness check read them from the graph file alone
SIZE_THRESHOLD = 1024
ALIGN = 4096
#: above this many bytes of weights, `export` stores them as external data by itself: protobuf
#: cannot serialise a message of 2 GiB or more, and the graph, constants folded by the exporter
#: and the fp16 copy need room beside the weights
AUTO_BYTES = (1 << 31) - (1 << 28)


def model_bytes(model) -> int:
    """Bytes of a torch module's parameters and buffers (shared tensors counted once)."""
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        key = (t.data_ptr(), t.numel(), t.dtype)
        if key not in seen:
            seen.add(key)
            total += t.numel() * t.element_size()
    return total


class WeightStore:
    """The shared data file of one export: `put` bytes (stored once per content), `externalize` an
    onnx_ir model's initializers into it, `finish` to publish it, `abort` to drop it."""

    def __init__(self, folder: str | os.PathLike, name: str = DATA_FILE, threshold: int = SIZE_THRESHOLD,
                 align: int = ALIGN):
        self.folder = Path(folder)
        self.name = name
        self.threshold = int(threshold)
        self.align = int(align)
        self._index: dict[str, tuple[int, int]] = {}
        self._hash = hashlib.sha256()
        self._size = 0
        self._file = None
        self._path: Optional[Path] = None
        #: bytes handed to `put`, and bytes written (the difference was stored once)
        self.bytes_in = 0

    # ------------------------------------------------------------------ writing
    def _open(self):
        if self._file is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            path = self.folder / self.name
            if path.is_symlink() or (path.exists() and not path.is_file()):
                raise ArtifactError(f"{path} exists and is not a plain file; remove it and export again")
            if path.exists():
                path.unlink()   # an earlier export's: the graphs that name it are being replaced too
            self._path = path
            self._file = open(path, "xb")
        return self._file

    def _write(self, data) -> None:
        self._file.write(data)
        self._hash.update(data)
        self._size += len(data)

    def put(self, data) -> tuple[int, int]:
        """(offset, length) of `data` (bytes-like) in the data file; written when first seen."""
        view = memoryview(data).cast("B")
        self.bytes_in += len(view)
        key = hashlib.sha256(view).hexdigest()
        hit = self._index.get(key)
        if hit is not None and hit[1] == len(view):
            return hit
        self._open()
        pad = (-self._size) % self.align
        if pad:
            self._write(b"\0" * pad)
        where = (self._size, len(view))
        self._write(view)
        self._index[key] = where
        return where

    def externalize(self, model) -> int:
        """Move every initializer of an onnx_ir `model` (its graph and subgraphs) of at least
        `threshold` bytes into the data file, replacing its value by a reference; returns the
        bytes moved. One tensor is in memory at a time, and the replaced in-memory values are
        released as the loop goes."""
        import onnx_ir as ir

        moved = 0
        for graph in model.graphs():     # the main graph and its subgraphs
            for value in list(graph.initializers.values()):
                t = value.const_value
                if t is None or isinstance(t, ir.ExternalTensor) or t.nbytes < self.threshold:
                    continue
                if t.dtype == ir.DataType.STRING:
                    continue
                data = t.tobytes()
                offset, length = self.put(data)
                del data
                value.const_value = ir.ExternalTensor(self.name, offset, length, t.dtype, shape=t.shape,
                                                      name=value.name or t.name or "", base_dir=self.folder)
                moved += length
        return moved

    # ------------------------------------------------------------------ publishing
    @property
    def used(self) -> bool:
        return self._file is not None

    def finish(self) -> Optional[dict]:
        """Flush and fsync the data file and return its manifest record `{"path", "sha256", "bytes"}`;
        None when no tensor was stored."""
        if self._file is None:
            return None
        f, self._file = self._file, None
        f.flush()
        os.fsync(f.fileno())
        f.close()
        return {"path": self.name, "sha256": self._hash.hexdigest(), "bytes": self._size}

    def abort(self) -> None:
        """Remove the data file of an export that failed (its graphs are not published either)."""
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._path is not None and self._path.exists():
            self._path.unlink()
        self._path = None

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.abort()
        return False
