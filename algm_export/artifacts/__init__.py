"""The export folder as typed objects: `ExportFolder`, its `Entry`s and `EngineRecord`s.

This is the only layer that reads or writes an export folder. The file format itself
(`manifest.json`, schema version "algm-export/1", sha256 checks, path containment, atomic
writes) lives in `algm_export.manifest`; the one-writer locks in `algm_export.lock`.
"""

from algm_export.artifacts.folder import EngineRecord, Entry, ExportFolder, find_engine_record  # noqa: F401
from algm_export.manifest import FORMAT as SCHEMA_VERSION  # noqa: F401

__all__ = ["ExportFolder", "Entry", "EngineRecord", "find_engine_record", "SCHEMA_VERSION"]
