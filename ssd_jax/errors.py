"""Errors a user can cause. The CLI prints their message on one line and exits 2.

Anything else escaping the CLI is a bug in ssd-jax and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user: a file, key, value or command line that we cannot use."""

    exit_code = 2


class CheckpointError(UserError):
    """A model directory or checkpoint is missing, incomplete or does not fit the model."""


class ConfigError(UserError):
    """A config file or config value is invalid."""


class ToleranceError(Exception):
    """A numerical check ran fine but its result is over tolerance (exit 1, not a usage error)."""

    exit_code = 1
