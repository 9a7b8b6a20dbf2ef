"""The external-data references of an ONNX file, checked before any reader follows them.

An ONNX tensor may keep its bytes in another file (`external_data`: `location`, `offset`,
`length`). ONNX Runtime, `onnx.load` and TensorRT's parser open that file relative to the graph's
folder, so a hostile graph could make them read any file the user can read (`../../.ssh/id_rsa`,
an absolute path, a symlink leading out: the path-traversal class of onnx 1.16's CVE-2024-27318 /
CVE-2024-27319). Every graph is therefore parsed *without* its external data first
(`load_external_data=False`) and every tensor that names a location is checked here:

* the location is a plain relative path (no absolute path, no `..`, no backslash) that stays inside
  the folder, symlinks resolved;
* inside an export folder it must be one of the manifest's `data_files`, whose sha256 is checked
  (once per process for an unchanged file); `offset + length` must lie within the file;
* only the keys the ONNX format defines (`location`, `offset`, `length`, `checksum`) are accepted.

Anything else is an `ArtifactError` (exit 2) naming the tensor and the location, and nothing has
read the file by then.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, Optional

from algm_export.core.errors import ArtifactError
from algm_export.core.manifest import REEXPORT, resolve_inside, sha256_file

KEYS = {"location", "offset", "length", "checksum"}
_verified: dict[tuple, str] = {}


def _tensors(model) -> Iterator:
    """Every TensorProto of a ModelProto: initializers, sparse ones, node attributes (Constant
    values), in the main graph, its subgraphs, the model-local functions and training graphs."""

    def of_attr(a):
        if a.HasField("t"):
            yield a.t
        yield from a.tensors
        if a.HasField("sparse_tensor"):
            yield a.sparse_tensor.values
            yield a.sparse_tensor.indices
        for sp in a.sparse_tensors:
            yield sp.values
            yield sp.indices
        if a.HasField("g"):
            yield from of_graph(a.g)
        for g in a.graphs:
            yield from of_graph(g)

    def of_nodes(nodes):
        for n in nodes:
            for a in n.attribute:
                yield from of_attr(a)

    def of_graph(g):
        yield from g.initializer
        for sp in g.sparse_initializer:
            yield sp.values
            yield sp.indices
        yield from of_nodes(g.node)

    yield from of_graph(model.graph)
    for f in model.functions:
        yield from of_nodes(f.node)
    for ti in model.training_info:
        yield from of_graph(ti.initialization)
        yield from of_graph(ti.algorithm)


def external_references(model) -> list[tuple[str, dict]]:
    """[(tensor name, {key: value})] of every tensor that keeps its data in another file."""
    from onnx import TensorProto

    out = []
    for t in _tensors(model):
        if t.external_data or t.data_location == TensorProto.EXTERNAL:
            entries: dict = {}
            for e in t.external_data:
                entries.setdefault(e.key, []).append(e.value)
            out.append((t.name, entries))
    return out


def _int(v: str) -> Optional[int]:
    return int(v) if v.isdigit() and len(v) <= 20 else None


def check_graph_file(path: str | os.PathLike, folder: str | os.PathLike,
                     data_files: Optional[dict[str, str]] = None, what: str = "ONNX file") -> list[Path]:
    """Check the external-data references of the ONNX file `path` (already sha256-checked, if it is
    listed) before anything reads them; return the data files it points into (real paths).

    folder: the folder its locations must stay inside (the export folder). data_files:
    {relative path: sha256} the manifest lists: every location must be one of them and its digest
    must match; None for a file outside any export folder (locations inside `folder` only)."""
    import onnx

    path = Path(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001  (protobuf's DecodeError and friends: the file is not ONNX)
        raise ArtifactError(f"{path} is not a readable ONNX model ({type(e).__name__}); re-export it") from None
    refs = external_references(model)
    del model
    found: dict[str, Path] = {}
    for name, entries in refs:
        bad = sorted(set(entries) - KEYS)
        loc = entries.get("location", [None])
        if bad or len(loc) != 1 or any(len(v) != 1 for v in entries.values()):
            raise ArtifactError(f"{path}: tensor {name!r} has external-data entries {sorted(entries)} (only one each of "
                                f"{sorted(KEYS)}, with a location, are accepted); {REEXPORT}")
        rel = loc[0]
        real = resolve_inside(folder, rel, f"external data of tensor {name!r} in {path.name}",
                              fix="the graph points outside its folder: do not use this file; " + REEXPORT)
        if data_files is not None and rel not in data_files:
            raise ArtifactError(f"{path}: tensor {name!r} keeps its data in {rel!r}, which the manifest does not list "
                                f"in data_files (with its sha256); {REEXPORT}")
        if not real.is_file():
            raise ArtifactError(f"{path}: tensor {name!r} keeps its data in {rel!r}, which is missing; {REEXPORT}")
        if rel not in found:
            if data_files is not None:
                _verify(real, data_files[rel], rel)
            found[rel] = real
        size = real.stat().st_size
        offset = _int(entries.get("offset", ["0"])[0])
        length = _int(entries["length"][0]) if "length" in entries else size - (offset or 0)
        if offset is None or length is None or offset + length > size:
            raise ArtifactError(f"{path}: tensor {name!r} points at bytes {entries.get('offset', ['0'])[0]}.."
                                f"+{entries.get('length', ['?'])[0]} of {rel!r}, which has {size} bytes; {REEXPORT}")
    return list(found.values())


def _verify(real: Path, digest: str, rel: str) -> None:
    st = real.stat()
    key = (str(real), st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev)
    if _verified.get(key) == digest:
        return
    if sha256_file(real) != digest:
        raise ArtifactError(f"{real}: sha256 does not match the manifest (data file {rel} changed or corrupted); "
                            + REEXPORT)
    _verified[key] = digest
