"""Key normalisation: one spelling per email and phone, refused with a reason otherwise."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from syncd.core.contacts import is_role_address, normalise_email, normalise_phone


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("ann@example.com", "ann@example.com"),
        ("  ann@example.com\t", "ann@example.com"),
        ("Ann.Lee@Example.COM", "ann.lee@example.com"),  # one person, one key, any case
        ("ann+news@EXAMPLE.org", "ann+news@example.org"),
        ("ann@Bücher.DE", "ann@bücher.de"),
        ("ann@xn--bcher-kva.de", "ann@bücher.de"),  # one spelling for an IDN domain
    ],
)
def test_normalise_email(raw: str, expected: str) -> None:
    assert normalise_email(raw) == expected
    assert normalise_email(expected) == expected


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("", "email is empty"),
        ("   ", "email is empty"),
        ("ann", "invalid email"),
        ("ann@", "invalid email"),
        ("@example.com", "invalid email"),
        ("ann@@example.com", "invalid email"),
        ("ann..lee@example.com", "invalid email"),
        ("ann@localhost", "invalid email"),
        ("Ann <ann@example.com>", "invalid email"),
        ("ann lee@example.com", "invalid email"),
    ],
)
def test_normalise_email_refuses(raw: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        normalise_email(raw)


@pytest.mark.parametrize(
    ("raw", "region", "expected"),
    [
        ("+375291234567", None, "+375291234567"),
        ("+375 (29) 123-45-67", None, "+375291234567"),
        (" +1 650-253-0000 ", None, "+16502530000"),
        ("+375291234567", "US", "+375291234567"),  # '+' wins over the default region
        ("8 029 123-45-67", "BY", "+375291234567"),
        ("029 1234567", "BY", "+375291234567"),
        ("(650) 253-0000", "US", "+16502530000"),
    ],
)
def test_normalise_phone(raw: str, region: str | None, expected: str) -> None:
    assert normalise_phone(raw, region) == expected
    assert normalise_phone(expected, None) == expected


@pytest.mark.parametrize(
    ("raw", "region", "reason"),
    [
        ("", None, "phone is empty"),
        ("375291234567", None, r"phone must be in international format \(\+\.\.\.\)"),
        ("8 029 123-45-67", None, "international format"),
        ("+375 12", None, "not a valid number"),
        ("+999 1234567", None, "invalid phone"),
        ("call me", "BY", "invalid phone"),
        ("12", "BY", "not a valid number"),
    ],
)
def test_normalise_phone_refuses(raw: str, region: str | None, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        normalise_phone(raw, region)


@pytest.mark.parametrize(
    ("email", "role"),
    [
        ("info@example.com", True),
        ("INFO@example.com", True),
        ("sales@example.com", True),
        ("no-reply@example.com", True),
        ("noreply@example.com", True),
        ("postmaster@example.com", True),
        ("support+tickets@example.com", True),  # sub-address of a role mailbox
        ("ann@example.com", False),
        ("information@example.com", False),
        ("ann.info@example.com", False),
        ("ann@info.example.com", False),  # only the local part counts
    ],
)
def test_is_role_address(email: str, role: bool) -> None:
    assert is_role_address(email) is role


@given(
    local=st.from_regex(r"[A-Za-z0-9]{1,10}([._+-][A-Za-z0-9]{1,6})?", fullmatch=True),
    domain=st.sampled_from(["example.com", "EXAMPLE.org", "Mail.Example.NET", "bücher.de"]),
    padding=st.sampled_from(["", " ", "\t "]),
)
def test_normalise_email_is_idempotent(local: str, domain: str, padding: str) -> None:
    once = normalise_email(f"{padding}{local}@{domain}{padding}")
    assert normalise_email(once) == once
    assert once.startswith(local.lower() + "@")
    assert once.endswith(domain.lower())


SPECIAL = ["test", "local", "localhost", "invalid", "onion", "arpa", "TEST"]


@given(
    local=st.from_regex(r"[A-Za-z0-9_%+-]{1,12}(\.[A-Za-z0-9_%+-]{1,6}){0,2}", fullmatch=True),
    host=st.from_regex(r"([A-Za-z0-9]([A-Za-z0-9-]{0,8}[A-Za-z0-9])?\.){1,3}", fullmatch=True),
    tld=st.one_of(st.from_regex(r"[A-Za-z]{2,6}", fullmatch=True), st.sampled_from(SPECIAL)),
)
def test_fast_path_agrees_with_the_validator(local: str, host: str, tld: str) -> None:
    """The everyday-address shortcut must give exactly what the full check gives."""
    from email_validator import EmailNotValidError, validate_email

    address = f"{local}@{host}{tld}"
    try:
        checked = validate_email(address, check_deliverability=False)
    except EmailNotValidError:
        with pytest.raises(ValueError):
            normalise_email(address)
        return
    assert normalise_email(address) == f"{checked.local_part.lower()}@{checked.domain}"
