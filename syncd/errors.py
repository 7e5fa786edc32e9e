"""Every error syncd raises on purpose, sorted by what the caller does next.

Each message tells the user what to do. The tree (``tests/test_errors.py`` checks it against the
classes)::

    SyncdError                  the root: the command line prints any that escapes, exit 1
    ├── FatalError              the cycle or command stops; it fails the same way until a person
    │   │                       acts on the message
    │   ├── ConfigError         the configuration is invalid: every problem, each naming its key
    │   ├── IngestError         a file cannot be read at all: nothing of it is applied
    │   ├── MassDeleteRefused   a cycle would delete too much (DESIGN rule 2): nothing is written
    │   ├── ListenError         the HTTP listener cannot bind its address
    │   ├── StarterExists       the starter configuration is there and --force was not given
    │   └── UnknownKey          ``syncd explain``: the store has never heard of the contact
    ├── ProviderError           the provider refused a call or its answer is unusable: the cycle
    │   │                       fails with ``code``, and the next one tries again
    │   ├── AuthError           the key or the method is refused: fix the key or the account
    │   ├── ExportIncomplete    the export proves nothing: the cycle pushes without deleting
    │   │                       (DESIGN rule 1)
    │   └── ProviderUnreachable (also a RetryLater, drawn there)
    └── RetryLater              transient, nothing to fix: a backoff or the next cycle does the rest
        ├── TryLater            one attempt failed in a way another may fix (a timeout, a 5xx, an
        │                       answer that says so): the HTTP client tries again
        ├── ProviderUnreachable no usable answer after the retries: the cycle ends "unreachable"
        ├── Stopped             the lease is lost or a stop was asked for: the cycle ends after
        │                       the batch in flight, reported "stopped" with the reason
        └── SourceReadFailed    a ``[[source]]`` read failed, timed out or was cut short:
            │                   nothing of it is applied, and the next read tries again
            └── SourceBusy      another process applied a read of the same source meanwhile

"Retry?" is asked one way: ``exc.retryable`` is ``isinstance(exc, RetryLater)``.
``ProviderUnreachable`` is both a ``ProviderError`` (every adapter call ends in a verdict or a
``ProviderError``) and a ``RetryLater`` (nothing is wrong with the call).

Skipping a row is not an exception: a row the provider refuses is a ``RowOutcome`` with its code
(``syncd.providers.base``; ``RowOutcome.retryable`` sends it again next cycle instead of holding
it), and a bad input row is a rejected row in the ingest report (``syncd.local.ingest``). Where
an exception becomes a row's outcome, the outcome's ``retryable`` is the exception's.

Signals caught before any caller sees them (``syncd.providers.http.NotJson``, which each adapter
turns into a ``ProviderError``, and the private ``_Refused`` and ``_RowProblem`` classes) are not
syncd errors; the emulators have errors of their own.
"""

from __future__ import annotations


class SyncdError(Exception):
    """Base of every error syncd raises on purpose."""

    @property
    def retryable(self) -> bool:
        """Whether a later attempt may succeed with nothing fixed (see ``RetryLater``)."""
        return isinstance(self, RetryLater)


# --------------------------------------------------------------------------- the three groups


class FatalError(SyncdError):
    """The cycle or command stops, and fails the same way until a person acts on the message."""


class ProviderError(SyncdError):
    """The provider answered with an error envelope or an unusable answer."""

    def __init__(self, message: str, *, code: str = "unspecified") -> None:
        self.code = code
        super().__init__(message)


class RetryLater(SyncdError):
    """Transient, nothing to fix: a backoff or the next cycle does the rest."""


# --------------------------------------------------------------------------- fatal


class ConfigError(FatalError):
    """The configuration is invalid. ``problems`` lists every problem found, each naming its key."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        listed = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"invalid configuration in {source}:\n{listed}")


class IngestError(FatalError):
    """A file could not be read at all (as opposed to single bad rows, which are reported)."""


class MassDeleteRefused(FatalError):
    """A cycle would delete more than the configured share of a target (DESIGN rule 2)."""


class ListenError(FatalError):
    """The HTTP listener could not bind its address."""


class StarterExists(FatalError):
    """The configuration file is already there and ``force`` was not given."""


class UnknownKey(FatalError):
    """``syncd explain``: no contact, base or history has this key (or it is no key at all)."""


# --------------------------------------------------------------------------- the provider's


class AuthError(ProviderError):
    """The provider refused the API key or the method: fix the key or the account."""


class ExportIncomplete(ProviderError):
    """The remote export failed, was truncated or inconsistent: nothing may be inferred from it."""


# --------------------------------------------------------------------------- retry later


class TryLater(RetryLater):
    """Raised while reading an answer or sending a request: another attempt may succeed.

    ``syncd.providers.http`` retries it with backoff, waiting ``retry_after`` seconds when the
    provider said how long; when the retries run out it becomes ``ProviderUnreachable``.
    """

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class ProviderUnreachable(ProviderError, RetryLater):
    """No usable answer after the retries: network down, timeouts, 5xx."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="unreachable")


class Stopped(RetryLater):
    """The cycle's lease is lost or a stop was asked for: leave after the batch in flight,
    everything confirmed kept. The message says which."""


class SourceReadFailed(RetryLater):
    """A ``[[source]]`` query failed, timed out or its connection dropped mid-stream: nothing
    of the read is applied. The message never holds the source's URL (it carries credentials)."""


class SourceBusy(SourceReadFailed):
    """Another process applied a read of this source while this one was reading: this read's
    diff is stale, and nothing of it is applied."""
