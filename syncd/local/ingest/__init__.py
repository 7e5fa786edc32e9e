"""Contact files into the mirror: the one way in.

Three steps, each callable on its own: ``read_rows`` (``syncd.local.ingest.read``) streams records
out of a file, ``validate`` (``syncd.local.ingest.check``) turns them into ``ContactChange`` values
or ``Rejection`` s, and ``apply`` (``syncd.local.ingest.write``) writes the changes in one
transaction. ``ingest_file`` composes them.

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

from sqlalchemy.engine import Engine

from syncd.config import IngestConfig
from syncd.local.ingest.check import validate
from syncd.local.ingest.read import read_rows
from syncd.local.ingest.write import IngestReport, apply


def ingest_file(engine: Engine, path: str | os.PathLike[str], config: IngestConfig) -> IngestReport:
    """Read, check and apply one file. Raises ``IngestError`` (changing nothing) if unreadable."""
    changes, rejected = validate(read_rows(path, encoding=config.encoding), config)
    report = apply(engine, changes, source=f"syncd ingest {Path(path).name}")
    report.file = str(path)
    report.rows += len(rejected)
    report.rejected = sorted(rejected + report.rejected, key=lambda r: r.line)
    return report
