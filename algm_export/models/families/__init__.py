"""Model families: configuration, construction, checkpoint format and built-ins, one file per family.

Each module registers a `Family` with `algm_export.models.registry` (see docs/models.md).
"""
