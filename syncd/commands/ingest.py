"""``syncd ingest``: contact files into the mirror, each in one transaction, with progress.

A big file takes a while (a million rows, some seconds), so its progress shows: on a terminal a
bar of the file's bytes with the rows read and applied; off a terminal (a pipe, a log file,
systemd) a JSON log line (``syncd.logs``) every ``every`` seconds, with the same counts.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from sqlalchemy.engine import Engine

from syncd.config import IngestConfig
from syncd.errors import IngestError
from syncd.local.ingest import IngestReport, ingest_file

log = logging.getLogger("syncd.ingest")

#: Seconds between two progress lines off a terminal.
PROGRESS_EVERY = 5.0


def ingest_path(
    db: Engine,
    path: Path,
    config: IngestConfig,
    *,
    terminal: bool,
    every: float = PROGRESS_EVERY,
) -> IngestReport:
    """Ingest one file, showing progress (``terminal``: a bar, else JSON log lines).

    Raises ``IngestError``, having changed nothing, if the file cannot be read or used.
    """
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise IngestError(f"{path}: cannot be read: {exc.strerror or exc}") from None
    with handle:
        size = os.fstat(handle.fileno()).st_size
        show = _bar if terminal else _log_lines
        with show(path, handle, size, every) as progress:
            return ingest_file(db, path, config, handle=handle, progress=progress)


Progress = Callable[[int, int], None]


@contextmanager
def _bar(path: Path, handle: BinaryIO, size: int, _every: float) -> Iterator[Progress]:
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        TextColumn,
        TimeElapsedColumn,
    )
    from rich.progress import (
        Progress as Bar,
    )

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TextColumn("{task.fields[rows]}"),
        TimeElapsedColumn(),
    )
    with Bar(*columns, transient=True) as bar:
        task = bar.add_task(path.name, total=size, rows="")

        def update(read: int, applied: int) -> None:
            rows = f"rows read {read:,}, applied {applied:,}"
            bar.update(task, completed=handle.tell(), rows=rows)

        yield update


@contextmanager
def _log_lines(path: Path, handle: BinaryIO, size: int, every: float) -> Iterator[Progress]:
    last = time.monotonic()

    def update(read: int, applied: int) -> None:
        nonlocal last
        now = time.monotonic()
        if now - last < every:
            return
        last = now
        log.info(
            "ingest: %s: %s rows read, %s applied",
            path.name,
            f"{read:,}",
            f"{applied:,}",
            extra={
                "file": str(path),
                "rows_read": read,
                "rows_applied": applied,
                "bytes_read": handle.tell(),
                "bytes_total": size,
            },
        )

    yield update
