"""The error tree drawn in ``syncd.errors``' docstring is the tree the classes make."""

from __future__ import annotations

import importlib
import pkgutil
import re
from types import ModuleType

import pytest

import syncd
from syncd import errors
from syncd.errors import (
    AuthError,
    ProviderError,
    ProviderUnreachable,
    RetryLater,
    Stopped,
    SyncdError,
    TryLater,
)

# One drawn line: the tree's indent, then a class name at the start of the line's own text.
_NODE = re.compile(r"^(?P<indent>(?:[│ ] {3})*)(?:[├└]── )?(?P<name>[A-Z]\w+)(?P<rest>.*)$")


def drawn_edges() -> set[tuple[str, str]]:
    """(parent, child) for every line of the drawing, read from the indent of each name."""
    doc = errors.__doc__ or ""
    drawing = doc.split("::\n\n", 1)[1].split("\n\n", 1)[0]
    edges: set[tuple[str, str]] = set()
    stack: list[str] = []
    for line in drawing.splitlines():
        text = line[4:]  # the block's own indent
        match = _NODE.match(text)
        if match is None or not (text.startswith("SyncdError") or "── " in text):
            continue  # a note continuing the line above
        depth = len(match["indent"]) // 4 + (0 if text.startswith("SyncdError") else 1)
        del stack[depth:]
        if stack:
            edges.add((stack[-1], match["name"]))
        stack.append(match["name"])
    return edges


#: Public exceptions that are not syncd errors: each is caught before any caller sees it.
SIGNALS = {"syncd.providers.http.NotJson"}


def syncd_modules() -> list[ModuleType]:
    """Every module of the package but the emulators (their errors are their own)."""
    names = [m.name for m in pkgutil.walk_packages(syncd.__path__, "syncd.")]
    return [
        importlib.import_module(name)
        for name in names
        if not name.endswith("__main__")
        and ".migrations" not in name
        and not name.startswith("syncd.emulators")
    ]


def class_edges() -> set[tuple[str, str]]:
    """(base, class) for every public error class under ``SyncdError``, in any syncd module."""
    syncd_modules()
    edges: set[tuple[str, str]] = set()
    todo: list[type[BaseException]] = [SyncdError]
    while todo:
        cls = todo.pop()
        for sub in cls.__subclasses__():
            if sub.__module__.startswith("syncd.") and not sub.__name__.startswith("_"):
                edges.add((cls.__name__, sub.__name__))
                todo.append(sub)
    return edges


def test_the_drawn_tree_is_the_class_tree() -> None:
    assert drawn_edges() == class_edges()


def test_every_public_exception_is_a_syncd_error_or_a_known_signal() -> None:
    outside = {
        f"{module.__name__}.{name}"
        for module in syncd_modules()
        for name, value in vars(module).items()
        if isinstance(value, type)
        and issubclass(value, BaseException)
        and value.__module__ == module.__name__
        and not name.startswith("_")
        and not issubclass(value, SyncdError)
    }
    assert outside == SIGNALS


def test_every_drawn_error_is_defined_in_errors_py() -> None:
    names = {name for edge in drawn_edges() for name in edge}
    assert all(getattr(errors, name).__module__ == "syncd.errors" for name in names)


@pytest.mark.parametrize(
    ("exc", "retryable"),
    [
        (TryLater("busy"), True),
        (ProviderUnreachable("down"), True),
        (Stopped(), True),
        (ProviderError("bad", code="invalid_arg"), False),
        (AuthError("refused", code="invalid_api_key"), False),
        (errors.ConfigError("here", ["a: wrong"]), False),
    ],
)
def test_retry_is_said_one_way(exc: SyncdError, retryable: bool) -> None:
    assert exc.retryable is retryable is isinstance(exc, RetryLater)


def test_unreachable_is_a_provider_error_with_its_code() -> None:
    exc = ProviderUnreachable("no usable answer")
    assert isinstance(exc, ProviderError) and exc.code == "unreachable"
    assert str(exc) == "no usable answer"
