"""The exception hierarchy: one base error, a few specific ones.

Every error meant for a user (a bad file, a bad argument) derives from
`ShiftNASError`; the CLI prints its message as one paragraph and exits with 2.
"""

from __future__ import annotations


class ShiftNASError(Exception):
    """Base class of every error shiftnas raises on purpose."""


class ArchError(ShiftNASError, ValueError):
    """An architecture (genome, string or file) breaks the spec or the grammar."""


class SpaceError(ShiftNASError, ValueError):
    """A search-space file is malformed."""


class ConfigError(ShiftNASError, ValueError):
    """A budget file, a CLI argument or another input is malformed."""
