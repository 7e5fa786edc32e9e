"""``bulk_work``: the collector's settings during bulk work, then as they were."""

from __future__ import annotations

import gc
import subprocess
import sys
import threading

from syncd.collector import GC_YOUNG_THRESHOLD, bulk_work


def test_bulk_work_sets_objects_aside_and_makes_young_passes_rare_then_puts_both_back() -> None:
    before = gc.get_threshold()
    frozen = gc.get_freeze_count()
    with bulk_work:
        assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, *before[1:])
        assert gc.get_freeze_count() > frozen
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_overlapping_works_share_the_threshold_and_the_last_one_done_puts_it_back() -> None:
    before = gc.get_threshold()
    inside, leave = threading.Event(), threading.Event()

    def other_work() -> None:
        with bulk_work:
            inside.set()
            leave.wait(10)

    other = threading.Thread(target=other_work)
    with bulk_work:
        other.start()
        assert inside.wait(10)
    # this one is done, the other is not: still bulk work, but every object is handed back
    # (works overlapping without end never keep garbage set aside for good)
    assert gc.get_threshold()[0] == GC_YOUNG_THRESHOLD and gc.get_freeze_count() == 0
    leave.set()
    other.join(10)
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0


def test_collection_switched_off_stays_off() -> None:
    before = gc.get_threshold()
    gc.set_threshold(0)
    try:
        with bulk_work:
            assert gc.get_threshold()[0] == 0
        assert gc.get_threshold()[0] == 0
    finally:
        gc.set_threshold(*before)


def test_an_exception_inside_still_puts_the_settings_back() -> None:
    before = gc.get_threshold()
    try:
        with bulk_work:
            raise RuntimeError("the file could not be read")
    except RuntimeError:
        pass
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0


def test_at_exit_the_objects_are_set_aside_and_the_other_handlers_still_run() -> None:
    """``syncd``'s console entry skips the exit's full collections: by the time the handlers
    registered before it run (logging's flush is one), every object is set aside."""
    program = (
        "import atexit, gc, sys\n"
        "atexit.register(lambda: print('frozen', gc.get_freeze_count() > 1_000))\n"
        "from syncd.collector import no_collection_at_exit\n"
        "no_collection_at_exit()\n"
        "atexit.register(lambda: print('before', gc.get_freeze_count()))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.split("\n") == ["before 0", "frozen True", ""]


def test_the_console_entry_sets_the_objects_aside_at_exit() -> None:
    done = subprocess.run(
        [sys.executable, "-c", "import atexit, gc\n"
         "atexit.register(lambda: print(gc.get_freeze_count() > 0))\n"
         "import sys; sys.argv = ['syncd', '--version']\n"
         "from syncd.cli import run; run()"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.stdout.splitlines()[-1] == "True", done.stdout + done.stderr
