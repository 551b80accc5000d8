"""Typed errors. Every expected failure is a `CasseatError` whose message is one line saying what
was expected, what was found and how to fix it; the CLI prints it without a traceback (exit 1)."""

from __future__ import annotations


class CasseatError(Exception):
    """Base of every error the toolkit expects and reports to users."""

    exit_code = 1


class ConfigError(CasseatError):
    """A config value, flag or YAML key is invalid: a usage error (exit 2)."""

    exit_code = 2


class UnknownNameError(ConfigError):
    """A registry lookup named something that is not registered."""


class UnsupportedArchError(CasseatError):
    """A model's architecture is not one the toolkit supports."""


class BackendUnavailableError(CasseatError):
    """A backend or optional dependency is not installed; the message names the pip extra."""


class DataError(CasseatError):
    """A dataset file, row, field or image is invalid. Messages start with `file:line: field:`."""


class ModelSpecError(CasseatError):
    """A model spec (path, `tiny:<arch>`, `embedded:<name>`) cannot be resolved."""


class ParityError(CasseatError):
    """An artifact was written but its verification against the source failed (exit 3)."""

    exit_code = 3
