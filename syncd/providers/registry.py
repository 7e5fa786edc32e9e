"""The provider table: every provider syncd can sync with, by the name a config gives.

``PROVIDERS`` maps each name to its :class:`~syncd.providers.spec.ProviderSpec`. The built-in
providers are one line each below, naming the spec object as ``"module:attribute"``; third-party
packages add theirs through the entry-point group ``syncd.providers``, whose entries name a
``ProviderSpec`` the same way::

    [project.entry-points."syncd.providers"]
    acme = "acme_syncd:SPEC"

Names are known without importing anything (the CLI's choices list them); a spec is imported the
first time its name is looked up, and must carry that name (ValueError when it cannot be loaded
or does not). A built-in name wins over an entry point of the same name, with a warning.
"""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from importlib.metadata import EntryPoint, entry_points

from syncd.config import TargetConfig
from syncd.providers.spec import ProviderSpec

__all__ = [
    "BUILTIN",
    "BUILTIN_PROVIDERS",
    "ENTRY_POINT_GROUP",
    "PROVIDERS",
    "ProviderTable",
    "spec_for",
]

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "syncd.providers"

#: The built-in providers: name -> "module:attribute" of its ProviderSpec.
BUILTIN: Mapping[str, str] = {
    "unisender": "syncd.providers.unisender:SPEC",
    "selzy": "syncd.providers.unisender:SELZY_SPEC",
    "smsby": "syncd.providers.smsby:SPEC",
    "octopush": "syncd.providers.octopush:SPEC",
    "netcore": "syncd.providers.netcore:SPEC",
}


class ProviderTable(Mapping[str, ProviderSpec]):
    """A read-only mapping of provider names to specs, each imported when first looked up.

    ``builtin`` lists the built-in specs by dotted path; ``group`` (None: none) is the
    entry-point group read for third-party ones. Entry points are read again on each look-up of
    a name that is not built in, so a package installed while the process runs is seen.
    """

    def __init__(self, builtin: Mapping[str, str], group: str | None = ENTRY_POINT_GROUP) -> None:
        self._builtin = dict(builtin)
        self._group = group
        self._loaded: dict[tuple[str, str], ProviderSpec] = {}  # (name, path) -> spec
        self._warned: set[str] = set()
        self._lock = threading.Lock()

    def _plugins(self) -> dict[str, EntryPoint]:
        if self._group is None:
            return {}
        found: dict[str, EntryPoint] = {}
        for point in entry_points(group=self._group):
            if point.name in self._builtin:
                if point.name not in self._warned:
                    self._warned.add(point.name)
                    log.warning(
                        "entry point %s = %s in group %s is ignored: %r is a built-in provider",
                        point.name,
                        point.value,
                        self._group,
                        point.name,
                    )
                continue
            found.setdefault(point.name, point)
        return found

    def _source(self, name: str) -> tuple[str, Callable[[], object]] | None:
        """Where ``name``'s spec is ("module:attribute") and how to import it."""
        path = self._builtin.get(name)
        if path is not None:
            return path, lambda: _load(path)
        point = self._plugins().get(name)
        return None if point is None else (point.value, point.load)

    def __getitem__(self, name: str) -> ProviderSpec:
        source = self._source(name)
        if source is None:
            raise KeyError(f"unknown provider {name!r} (known: {', '.join(self)})")
        where, load = source
        with self._lock:
            spec = self._loaded.get((name, where))
        if spec is not None:
            return spec
        try:
            found = load()
        except Exception as exc:  # a broken package: say which, as a problem of the config
            raise ValueError(f"provider {name!r}: cannot load {where}: {exc!r}") from exc
        if not isinstance(found, ProviderSpec):
            raise ValueError(f"provider {name!r}: {where} is not a ProviderSpec")
        if found.name != name:
            raise ValueError(f"provider {name!r}: {where} is the spec of {found.name!r}")
        with self._lock:
            self._loaded[(name, where)] = found
        return found

    def __iter__(self) -> Iterator[str]:
        yield from self._builtin
        yield from sorted(self._plugins())

    def __len__(self) -> int:
        return len(self._builtin) + len(self._plugins())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and (name in self._builtin or name in self._plugins())


def _load(path: str) -> object:
    module, _, attribute = path.partition(":")
    return getattr(importlib.import_module(module), attribute)


#: Every provider: the built-in ones, then those of installed packages' entry points.
PROVIDERS = ProviderTable(BUILTIN)

#: The built-in providers alone (what the checked-in configuration schema describes).
BUILTIN_PROVIDERS = ProviderTable(BUILTIN, group=None)


def spec_for(target: TargetConfig) -> ProviderSpec:
    """The spec of ``target``'s provider (KeyError naming the known ones when there is none)."""
    return PROVIDERS[target.provider]
