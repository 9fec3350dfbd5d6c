"""Errors raised by aisfusion.

::

    AisFusionError
    ├── ConfigError                 bad settings; lists every problem with its path
    ├── EmbeddedServerError         the embedded PostgreSQL/Valkey could not start
    │   └── DataDirLockedError      another instance holds the data directory
    └── StorageError                a storage operation failed
        ├── TransientStorageError   retry later (connection lost, timeout)
        └── PermanentStorageError   retrying will not help (constraint, bad data)

Per-message problems (bad checksum, undecodable payload) are not exceptions: they are counted
where they happen and the message is skipped.
"""

from __future__ import annotations


class AisFusionError(Exception):
    """Base of every aisfusion error."""


class ConfigError(AisFusionError):
    """Invalid configuration. `problems` holds one line per bad setting."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid configuration:\n  " + "\n  ".join(problems))


class EmbeddedServerError(AisFusionError):
    """An embedded server could not be started or did not become ready."""


class DataDirLockedError(EmbeddedServerError):
    """Another aisfusion instance owns the embedded data directory."""


class StorageError(AisFusionError):
    """A storage operation failed."""


class TransientStorageError(StorageError):
    """A storage operation failed for a reason that may go away (retry)."""


class PermanentStorageError(StorageError):
    """A storage operation failed for a reason retrying cannot fix."""
