"""Contact files into the mirror: the one way in.

Three steps, each callable on its own: ``read_rows`` (``syncd.local.ingest.read``) streams records
out of a file, ``validate`` (``syncd.local.ingest.check``) turns them into ``ContactChange`` values
or ``Rejection`` s, and ``apply`` (``syncd.local.ingest.write``) writes the changes in one
transaction. ``ingest_file`` composes their streaming forms (``checked`` and ``apply_stream``):
a file is read, checked and written chunk by chunk inside one transaction, so memory stays
flat however long the file is, and a file that turns out unreadable late on still changes
nothing.

A file that cannot be read at all (not UTF-8, broken CSV quoting, no usable header, not JSON)
raises ``IngestError`` and changes nothing. A bad row is rejected with its line and reason and
the good rows still apply (DESIGN §3 rules 6 and 8).

Where the rules are written down: the file formats, the reserved columns and the limits that
keep a hostile file cheap in ``read``; what makes a row bad in ``check``; what a good row does to
the mirror in ``write``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

from sqlalchemy.engine import Engine

from syncd.config import IngestConfig
from syncd.local.ingest.check import checked, validate
from syncd.local.ingest.read import read_rows
from syncd.local.ingest.write import IngestReport, Progress, apply, apply_stream

__all__ = ["IngestReport", "apply", "apply_stream", "ingest_file", "validate"]


def ingest_file(
    engine: Engine,
    path: str | os.PathLike[str],
    config: IngestConfig,
    *,
    handle: BinaryIO | None = None,
    progress: Progress | None = None,
) -> IngestReport:
    """Read, check and apply one file in one transaction. Raises ``IngestError`` (changing
    nothing) if it is unreadable; ``handle``, ``progress``: see ``read_rows``, ``apply_stream``."""
    rows = read_rows(path, handle, encoding=config.encoding)
    report = apply_stream(
        engine, checked(rows, config), progress=progress, source=f"syncd ingest {Path(path).name}"
    )
    report.file = str(path)
    return report
