"""A small hierarchy of errors whose messages tell the user what to do."""

from __future__ import annotations


class SyncdError(Exception):
    """Base of every error syncd raises on purpose."""


class ConfigError(SyncdError):
    """The configuration is invalid. ``problems`` lists every problem found, each naming its key."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        listed = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"invalid configuration in {source}:\n{listed}")


class ProviderError(SyncdError):
    """The provider answered with an error envelope or an unusable answer."""

    def __init__(self, message: str, *, code: str = "unspecified", retryable: bool = False) -> None:
        self.code = code
        self.retryable = retryable
        super().__init__(message)


class ProviderUnreachable(ProviderError):
    """No usable answer after the retries: network down, timeouts, 5xx."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="unreachable", retryable=True)


class AuthError(ProviderError):
    """The provider refused the API key or the method: fix the key or the account."""


class ExportIncomplete(ProviderError):
    """The remote export failed, was truncated or inconsistent: nothing may be inferred from it."""


class MassDeleteRefused(SyncdError):
    """A cycle would delete more than the configured share of a target (DESIGN rule 2)."""


class IngestError(SyncdError):
    """A file could not be read at all (as opposed to single bad rows, which are reported)."""
