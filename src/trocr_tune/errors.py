"""The one exception type the CLI turns into a one-line message and exit code 2."""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user (config, paths, data): reported as one line, exit code 2."""


def check(condition: object, message: str) -> None:
    """Raise UserError(message) when `condition` is falsy."""
    if not condition:
        raise UserError(message)
