"""The exception hierarchy: one base error, a few specific ones.

Every error meant for a user (a bad file, a bad argument, an unreachable
storage) derives from `ShiftNASError`; the CLI prints its message as one
paragraph and exits with 2. This module imports nothing, so every layer,
the kernels included, can raise these.
"""

from __future__ import annotations


class ShiftNASError(Exception):
    """Base class of every error shiftnas raises on purpose."""


class ArchError(ShiftNASError, ValueError):
    """An architecture (genome, string or file) breaks the spec or the grammar."""


class SpaceError(ShiftNASError, ValueError):
    """A search-space file is malformed."""


class ConfigError(ShiftNASError, ValueError):
    """A budget file, a CLI argument, an environment variable or another input is malformed."""


class DataError(ConfigError):
    """A data set is missing, malformed or fails its checksum."""


class StorageError(ConfigError):
    """The search's storage or artifact store cannot be used as asked."""
