"""Which exceptions are the user's to fix (shown as one line by the CLI) rather than bugs."""
from __future__ import annotations


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN/inf; the message names the step."""


class CheckpointMismatchError(RuntimeError):
    """A checkpoint that does not belong to this run's config or model."""


# ValueError covers ConfigError, MeshError and the data readers' DataError.
USER_ERRORS = (ValueError, OSError, KeyError, NonFiniteLossError, CheckpointMismatchError)
