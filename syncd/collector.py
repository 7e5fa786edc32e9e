"""The garbage collector set for bulk work: a file applied, a cycle of a whole list.

Bulk work keeps many small objects alive at once (a chunk's rows, a call's worth of contacts),
none of them in a reference cycle: refcounting frees them. With Python's defaults the collector
still walks them over and over:

- a young pass comes each time 700 more container objects were made than freed, and walks the
  young objects still alive, all of them still in use; every tenth a middle pass does the same;
- the rows live long enough to reach the oldest generation, so a full pass comes every few
  chunks, and each one walks every object of the process (the modules, the engine: about
  100,000) as well.

Measured: at 100,000 rows of an ingested file, 10 full passes took 0.65 s (a sixth of the file's
CPU) and 1,263 young and 115 middle ones 0.2 s; a first push of 100,000 contacts spent 0.5-0.8 s
of its 5.7 s in the collector.

``bulk_work`` sets the objects that exist when it starts aside from the full passes
(``gc.freeze``) and makes young passes rare (the first threshold ``GC_YOUNG_THRESHOLD``). A
reference cycle made anyway (an exception's traceback, say) still counts towards the threshold,
so the garbage waiting for a pass stays bounded, and ``gc.unfreeze`` hands the set-aside objects
back to the next full pass: nothing is lost, only collected later. The settings are the
process's: works that overlap (the inbox, the ingest API, several targets' cycles) share them.
Each work done hands every set-aside object back, so that works overlapping without end (a
daemon's targets) never keep garbage set aside for good; a work still running only loses its
own setting aside, which costs time. The last one done puts the threshold back.
"""

from __future__ import annotations

import atexit
import gc
import threading
from types import TracebackType

#: The collector's first threshold during bulk work (Python's default: 700). A young pass walks
#: every young object still alive, and in bulk work nearly all are: a call's worth of rows. A
#: first push of 100,000 contacts at 10,000 made 66 young passes and spent 0.3 s more CPU than
#: at this threshold, where it makes none; cyclic garbage waits for at most this many objects.
GC_YOUNG_THRESHOLD = 100_000


class _BulkWork:
    """``with bulk_work:`` around bulk work; re-entrant and shared between threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0
        self._saved: tuple[int, int, int] = gc.get_threshold()

    def __enter__(self) -> None:
        with self._lock:
            # each start sets aside what exists now, the other works' objects included
            gc.freeze()
            if self._users == 0:
                self._saved = gc.get_threshold()
                first, second, third = self._saved
                if first != 0:  # 0: collection is off, and stays off
                    gc.set_threshold(max(first, GC_YOUNG_THRESHOLD), second, third)
            self._users += 1

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _traceback: TracebackType | None,
    ) -> None:
        with self._lock:
            self._users -= 1
            gc.unfreeze()
            if self._users == 0:
                gc.set_threshold(*self._saved)


bulk_work = _BulkWork()


def no_collection_at_exit() -> None:
    """Let the interpreter's exit skip its full collections: it walks every object of the
    process (after a cycle: about 100,000, SQLAlchemy's, pydantic's and the modules') for
    nothing, 0.15 s of CPU a ``syncd run-once``. An ``atexit`` handler sets the objects aside
    (``gc.freeze``); every other handler (logging's flush among them) still runs, and
    refcounting still frees every object that is not in a reference cycle. The process is
    ending: nothing set aside is kept for long."""
    atexit.register(gc.freeze)
