"""Normalising contact keys: the one spelling of an email or a phone the whole of syncd uses.

Keys must be normalised the same way everywhere (DESIGN §8, "duplicates after a lost answer"):
two spellings of one address would make two contacts. These functions are pure and idempotent,
``normalise_x(normalise_x(v)) == normalise_x(v)``, and raise ``ValueError`` with a short reason
a person can act on.
"""

from __future__ import annotations

import re
from functools import cache

# email-validator and phonenumbers are imported where an address or a number is first checked,
# not with this module: importing them costs about 35 ms of CPU (their regexes, the number
# metadata), which a run that reads no new address (a push of the mirror) need not pay.

# Local parts that name a function rather than a person. Providers refuse to import them (or
# accept them and then throttle the sender), and mailing them hurts the sender's reputation:
# they are read by many people, rarely opted in, and often feed spam traps.
ROLE_LOCAL_PARTS: frozenset[str] = frozenset(
    {
        "abuse",
        "admin",
        "administrator",
        "all",
        "billing",
        "compliance",
        "contact",
        "devnull",
        "do-not-reply",
        "do_not_reply",
        "donotreply",
        "everyone",
        "feedback",
        "help",
        "hello",
        "hostmaster",
        "info",
        "inquiries",
        "jobs",
        "mailer-daemon",
        "marketing",
        "noc",
        "no-reply",
        "no_reply",
        "noreply",
        "office",
        "orders",
        "postmaster",
        "press",
        "privacy",
        "root",
        "sales",
        "security",
        "support",
        "team",
        "webmaster",
    }
)


# The everyday address: plain ASCII atoms, a dotted host, a letters-only top-level domain. Such an
# address comes out of email-validator unchanged but for case, so the full check (which costs
# ~80 us and dominates reading a million-row export) is skipped for it. Anything else takes the
# full path.
_PLAIN_EMAIL = re.compile(
    r"[a-z0-9_%+-]+(?:\.[a-z0-9_%+-]+)*@(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}"
)


@cache
def _special_use() -> frozenset[str]:
    """The special-use domains (RFC 6761) email-validator refuses."""
    from email_validator import SPECIAL_USE_DOMAIN_NAMES

    return frozenset(SPECIAL_USE_DOMAIN_NAMES)


def normalise_email(raw: str) -> str:
    """Trim, check the syntax, and lower-case the whole address.

    RFC 5321 lets a mail server treat ``Ann`` and ``ann`` as different mailboxes, but no mailbox
    provider does, and marketing providers match addresses case-insensitively (the emulator
    stores them lower-cased). A sync key must be a bijection between the two sides (DESIGN §8):
    if the mirror kept ``Ann@x.com`` while the provider answers ``ann@x.com``, every cycle would
    see a new contact on each side. So the key is the lower-cased address, and one person typing
    their address in two cases is one contact.
    """
    text = raw.strip()
    if not text:
        raise ValueError("email is empty")
    lowered = text.lower()
    if (
        len(lowered) <= 254
        and _PLAIN_EMAIL.fullmatch(lowered)
        and lowered.index("@") <= 64
        and "xn--" not in lowered  # punycode domains get the validator's one Unicode spelling
        and lowered.rsplit(".", 1)[1] not in _special_use()  # the validator refuses them
    ):
        return lowered
    from email_validator import EmailNotValidError, validate_email

    try:
        checked = validate_email(text, check_deliverability=False)
    except EmailNotValidError as exc:
        raise ValueError(f"invalid email {text!r}: {exc}") from None
    # email-validator lower-cases (and IDNA-normalises) the domain and NFC-normalises the local
    # part without changing its case; the local part is lower-cased here.
    return f"{checked.local_part.lower()}@{checked.domain}"


def normalise_phone(raw: str, default_region: str | None) -> str:
    """Return the phone in E.164 (``+375291234567``).

    A number written without ``+`` is read in ``default_region``; without one it is refused
    rather than guessed, since a wrong guess would message a stranger.
    """
    text = raw.strip()
    if not text:
        raise ValueError("phone is empty")
    if not text.startswith("+") and default_region is None:
        raise ValueError("phone must be in international format (+...)")
    import phonenumbers

    try:
        number = phonenumbers.parse(text, None if text.startswith("+") else default_region)
    except phonenumbers.NumberParseException as exc:
        raise ValueError(f"invalid phone {text!r}: {exc._msg}") from None
    if not phonenumbers.is_valid_number(number):
        raise ValueError(f"invalid phone {text!r}: not a valid number")
    formatted: str = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    return formatted


def is_role_address(email: str) -> bool:
    """True for addresses like ``info@`` or ``no-reply+news@``: a function, not a person."""
    local = email.rpartition("@")[0].lower()
    # Sub-addressing (info+news@) still lands in the role mailbox.
    local = local.partition("+")[0]
    return local in ROLE_LOCAL_PARTS
