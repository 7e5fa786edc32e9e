"""The company's own database as an input: each ``[[source]]`` query read into a local list.

``pull`` (``syncd.local.source.pull``) does one read: ``read_source`` (``read``) streams the
query's rows read-only, in one transaction, within the source's timeout; each row is
fingerprinted and diffed against the last read (``state``: the ``source_row`` and
``source_run`` tables); the rows that changed are checked and written through the same steps
as a contact file (``syncd.local.ingest``), vanished rows leave the list under the mass-delete
guard, and all of it commits in one transaction or not at all. In cursor mode (``cursor``)
only rows past the last cursor value are read, with a full read every ``full_every``.

Who calls it: ``syncd source pull`` (``syncd.commands.sources``) and the daemon's schedule.
"""

from __future__ import annotations

from syncd.local.source.pull import SourceReport, pull
from syncd.local.source.read import masked_url, register_url

__all__ = ["SourceReport", "masked_url", "pull", "register_url"]
