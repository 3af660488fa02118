"""The project's error types: each is the user's to fix, shown by the CLI as one line (exit 2).

Any other exception is a bug and keeps its traceback. Each type also derives from the builtin a
caller would expect (ValueError, FileNotFoundError, ...), so `except ValueError` keeps working.
"""
from __future__ import annotations


class ScalingJaxError(Exception):
    """Base of every error the user can fix; the message names the file, key or step at fault."""


class ConfigError(ScalingJaxError, ValueError):
    """A config key or value that is not valid; the message names the key."""


class DataError(ScalingJaxError, ValueError):
    """Malformed or unusable data; the message names the file (and line, where there is one)."""


class MissingFileError(ScalingJaxError, FileNotFoundError):
    """A file or directory the user named does not exist."""


class OutputExistsError(ScalingJaxError, FileExistsError):
    """An output path that exists and is not ours to replace."""


class MeshError(ScalingJaxError, ValueError):
    """A mesh shape that does not fit the devices, or a batch that does not fit the mesh."""


class CheckpointError(ScalingJaxError, ValueError):
    """A model directory or checkpoint that cannot be read into the requested model."""


class CheckpointMismatchError(ScalingJaxError, RuntimeError):
    """A checkpoint that does not belong to this run's config or model."""


class NoReadableCheckpointError(ScalingJaxError, RuntimeError):
    """Checkpoints exist but none can be read; never treated as "start from scratch"."""


class NonFiniteLossError(ScalingJaxError, RuntimeError):
    """The training loss became NaN/inf; the message names the step."""


class RunDirLockedError(ScalingJaxError, RuntimeError):
    """Another process holds the run directory's lock; the message names it (pid, host)."""


class FetchError(ScalingJaxError, OSError):
    """A registry download that failed or did not match its pinned checksum."""


__all__ = ["ScalingJaxError", "ConfigError", "DataError", "MissingFileError", "OutputExistsError", "MeshError", "CheckpointError",
           "CheckpointMismatchError", "NoReadableCheckpointError", "NonFiniteLossError", "RunDirLockedError", "FetchError"]
