"""Typed errors whose message is the one line a user sees.

Library code raises these with a message that names the file or field at fault; the CLI
turns them into that single line and a non-zero exit, the way sqlite-utils turns library
exceptions into `click.ClickException` at its edge.
"""


class HistosynthError(Exception):
    """Base class: the message is complete and names what is wrong and where."""


class PoolError(HistosynthError):
    """A pool folder is missing, empty, or laid out in a way we cannot read."""


class ImageError(HistosynthError):
    """An image file cannot be decoded or converted to RGB uint8."""


class ConfigError(HistosynthError):
    """A study definition (TOML) is malformed or inconsistent with its pools."""


class StudyError(HistosynthError):
    """A study database operation was refused (unknown study, duplicate name, ...)."""
