"""Errors that carry a user-facing message and the spec field to fix."""

from __future__ import annotations


class SpecError(ValueError):
    """The spec cannot be served as written. Reported as Stalled=True with reason InvalidSpec."""

    reason = "InvalidSpec"

    def __init__(self, field: str, message: str, reason: str | None = None) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
        if reason is not None:
            self.reason = reason


class DoesNotFitError(SpecError):
    """The model does not fit the GPUs asked for (or any GPU available)."""

    reason = "DoesNotFit"
