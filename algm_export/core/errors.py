"""Typed errors. Every error names the problem and the fix; the CLI prints them without a traceback."""


class AlgmError(Exception):
    """Base class of every error algm-export raises on purpose (CLI exit code 2)."""


class ConfigError(AlgmError, ValueError):
    """A setting that cannot work: image size, window, layers, threshold, capacity."""


class CapacityError(ConfigError):
    """A capacity below the smallest achievable token count, or above N."""


class CheckpointError(AlgmError):
    """A checkpoint or variant.yml that is missing, truncated or does not match."""


class InputError(AlgmError, ValueError):
    """Bad input data: NaN/Inf in an image, unreadable image files, empty folders."""


class ArtifactError(AlgmError):
    """An export folder or engine that does not match its manifest (sha256, version, GPU)."""


class BackendUnavailable(AlgmError):
    """A backend (TensorRT, CUDA, a plugin library) that is not present here."""


class FolderInUse(ArtifactError):
    """Another algm-export run holds the export folder's lock (one writer per folder)."""
