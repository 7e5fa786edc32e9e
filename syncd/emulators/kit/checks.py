"""The checks several emulators make the same way: an email address's shape and the API key a
call carries. A check one provider words or draws its own way stays in that provider's file."""

from __future__ import annotations

import re

# The providers refuse malformed addresses without documenting a grammar; this is RFC 5322's
# dot-atom [INFERRED]: no dot at either end of the local part, none doubled anywhere, a domain of
# non-empty labels ending in a letters-only top-level one.
EMAIL_RE = re.compile(r"^(?!\.)(?!.*\.\.)[^@\s,;\"<>]+(?<!\.)@(?:[^@\s,;\"<>.]+\.)+[A-Za-z]{2,}$")


def key_accepted(given: str, expected: str | None) -> bool:
    """A credential passes when it is given and, if the account has one (``expected``), equal."""
    return bool(given) and (expected is None or given == expected)
