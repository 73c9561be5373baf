"""Errors that reach the user: one clear sentence naming the field and the value."""

from __future__ import annotations

import enum
from typing import Any


class CanaryKitError(Exception):
    """Base class for every error canarykit reports to a user instead of a traceback."""


class BadInput(CanaryKitError, ValueError):
    """Input (a flag, a YAML field, a notebook parameter) that canarykit refuses.

    Raised before anything is sent to a cluster, so a refused input never changes state.
    """

    def __init__(self, field: str, value: Any, problem: str) -> None:
        self.field = field
        self.value = value
        self.problem = problem
        super().__init__(f"{field}: {problem} (got {value!r})")


class ClusterError(CanaryKitError):
    """The cluster refused or could not carry out a change."""


class ConcurrentChangeError(ClusterError):
    """Someone else changed the fields canarykit manages while it was changing them."""


class ExitCode(enum.IntEnum):
    """Every canarykit command's exit status, defined once."""

    OK = 0  # done; PASS; promoted; no validation errors
    FAILED = 1  # FAIL; rolled back; validation errors; the cluster refused
    BAD_INPUT = 2  # refused input (flag, plan, file); nothing was changed
    INCONCLUSIVE = 3  # not enough data to judge: never a PASS
    INTERRUPTED = 130  # Ctrl-C


def exit_code_for(error: BaseException) -> ExitCode:
    """The exit status a command ends with when `error` reaches the user."""
    if isinstance(error, BadInput):
        return ExitCode.BAD_INPUT
    if isinstance(error, KeyboardInterrupt):
        return ExitCode.INTERRUPTED
    return ExitCode.FAILED
