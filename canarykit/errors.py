"""Errors that reach the user: one clear sentence naming the field and the value."""

from __future__ import annotations

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
