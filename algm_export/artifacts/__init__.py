"""The export folder as typed objects: `ExportFolder`, its `Entry`s and `EngineRecord`s.

This is the layer that everything above the model layer (runtimes, the library workflows, the
commands) uses to read or write an export folder: nothing above it imports `algm_export.core.manifest`
or `algm_export.core.lock` (tests/test_architecture.py). Those two stay in the core layer because the
exporter (`export/pipeline.py`, model layer) writes the folder they describe: the file format
(`manifest.json`, schema "algm-export/1", sha256 checks, path containment, atomic writes) and the
one-writer locks. What the layers above need of them is re-exported here.
"""

from algm_export.artifacts.folder import (EngineRecord, Entry, ExportFolder, find_engine_record,  # noqa: F401
                                          same_engine)
from algm_export.core.lock import folder_lock, locks_export_folder  # noqa: F401
from algm_export.core.manifest import FORMAT as SCHEMA_VERSION  # noqa: F401
from algm_export.core.manifest import atomic_path, sha256_file, tool_versions, write_json_atomic  # noqa: F401
# the schema rules, for the other JSON files of a folder (bench.json, validation reports) that a reader checks
from algm_export.core.manifest import (BOOL, COUNT, DICT, NUM, SIZE, STR, ListOf, Nullable, Rule,  # noqa: F401
                                       schema_errors)

__all__ = ["ExportFolder", "Entry", "EngineRecord", "find_engine_record", "same_engine", "SCHEMA_VERSION",
           "locks_export_folder", "folder_lock", "atomic_path", "write_json_atomic", "sha256_file", "tool_versions",
           "schema_errors", "Rule", "ListOf", "Nullable", "BOOL", "COUNT", "DICT", "NUM", "SIZE", "STR"]
