"""One exception type per kind of failure a user can act on."""

from __future__ import annotations


class GbmmetError(Exception):
    """Base class of every error gbmmet raises on purpose."""


class ConfigError(GbmmetError, ValueError):
    """A parameter, preset or option is impossible (named in the message)."""


class OutputExistsError(GbmmetError, FileExistsError):
    """The output folder is not empty and ``overwrite`` was not asked for."""


class TemplateError(GbmmetError, FileNotFoundError):
    """The bundled brain template cannot be found (nilearn missing or incomplete)."""
