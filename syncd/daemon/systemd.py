"""sd_notify(3) without libsystemd: a datagram to ``$NOTIFY_SOCKET``, and the watchdog ping.

The protocol is one ``KEY=value`` per line in one datagram to a Unix socket, so a dependency
is not worth it. Everything here does nothing when ``NOTIFY_SOCKET`` is unset (not under
systemd, or ``Type=simple``), and a failed send is logged, never raised: telling systemd how we
are must never be what stops the daemon.

``StatusLine`` keeps the one-line ``STATUS=`` that ``systemctl status`` shows in step with the
cycles: what each running cycle is doing ("newsletter: pushing 120 differing keys, 3 calls
sent"), else "idle" with the last cycle's outcome and time, and the targets failing.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping

log = logging.getLogger("syncd.systemd")

SEND_TIMEOUT = 0.5  # seconds one notification may wait for room in the manager's queue


class Notifier:
    """Sends state changes to the service manager named by ``NOTIFY_SOCKET``."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        self.address = _socket_address((os.environ if env is None else env).get("NOTIFY_SOCKET"))
        self._failing = False

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def ready(self, status: str | None = None) -> bool:
        return self.send("READY=1", *([f"STATUS={_one_line(status)}"] if status else []))

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={_one_line(text)}")

    def stopping(self) -> bool:
        return self.send("STOPPING=1")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def send(self, *assignments: str) -> bool:
        """One datagram of ``KEY=value`` lines; True when it was handed to the socket."""
        if self.address is None or not assignments:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                # A datagram send blocks while the receiver's queue is full (10 messages by
                # default on Linux); a manager that stopped reading must not stall a shutdown.
                sock.settimeout(SEND_TIMEOUT)
                sock.sendto("\n".join(assignments).encode(), self.address)
        except OSError as exc:
            # Warn once per run of failures, not on every watchdog ping.
            level = logging.DEBUG if self._failing else logging.WARNING
            log.log(level, "sd_notify to %s failed: %s", self._shown(), exc)
            self._failing = True
            return False
        self._failing = False
        return True

    def _shown(self) -> str:
        return str(self.address).replace("\0", "@", 1)


def watchdog_interval(env: Mapping[str, str] | None = None, pid: int | None = None) -> float | None:
    """Seconds between watchdog pings: half of ``WATCHDOG_USEC``, as sd_watchdog_enabled(3) says.

    None when there is no watchdog, or when ``WATCHDOG_PID`` names another process (the variables
    were inherited from a parent that is the one being watched).
    """
    env = os.environ if env is None else env
    watched = env.get("WATCHDOG_PID")
    if watched and watched.strip() != str(os.getpid() if pid is None else pid):
        return None
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / 2 / 1_000_000 if usec > 0 else None


class WatchdogPinger(threading.Thread):
    """Sends WATCHDOG=1 every ``interval`` seconds for as long as ``alive()`` says so.

    When ``alive()`` turns false (or raises) the pings stop on purpose, so that systemd notices
    the hang and restarts the service; they resume if it recovers in time.
    """

    def __init__(
        self,
        notifier: Notifier,
        *,
        alive: Callable[[], bool],
        interval: float | None = None,
    ) -> None:
        super().__init__(name="syncd-watchdog", daemon=True)
        self.notifier = notifier
        self.alive = alive
        self.interval = watchdog_interval() if interval is None else interval
        self._halt = threading.Event()
        self._withheld = False  # log the change of state, not every skipped ping

    @property
    def active(self) -> bool:
        return self.notifier.enabled and self.interval is not None and self.interval > 0

    def start(self) -> None:
        if self.active:  # no thread at all when there is nobody to ping
            super().start()

    def run(self) -> None:
        assert self.interval is not None
        while not self._halt.is_set():
            if self._check_alive():
                self.notifier.watchdog()
            self._halt.wait(self.interval)

    def stop(self, timeout: float = 2.0) -> None:
        self._halt.set()
        if self.is_alive():
            self.join(timeout)

    def _check_alive(self) -> bool:
        try:
            ok = self.alive()
        except Exception:
            log.exception("watchdog liveness check raised")
            ok = False
        if ok == self._withheld:  # state changed
            if ok:
                log.info("alive again: watchdog pings resume")
            else:
                log.warning("not alive: withholding watchdog pings so systemd can restart us")
            self._withheld = not ok
        return ok


class StatusLine:
    """The daemon's ``STATUS=``, rebuilt and sent whenever a cycle moves on.

    Cycles of several targets run at once, so the line names each running one; a phase that
    repeats (a call sent, then another) is sent at most every ``min_gap`` seconds, so a cycle of
    two thousand calls does not fill the manager's queue, while a new phase is always sent.
    """

    def __init__(
        self,
        notifier: Notifier,
        *,
        targets: int,
        min_gap: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.notifier = notifier
        self.min_gap = min_gap
        self._clock = clock
        self._lock = threading.Lock()
        self._targets = targets
        self._doing: dict[str, tuple[str, str]] = {}  # target -> (phase, words)
        self._failing: list[str] = []
        self._last: tuple[str, str, float] | None = None  # target, outcome, when
        self._sent_at = float("-inf")
        self._note = ""

    def set_targets(self, n: int, note: str = "") -> None:
        """The number of configured targets, and a passing remark ("reloaded") until the next
        cycle ends."""
        with self._lock:
            self._targets, self._note = n, note
        self._send(force=True)

    def doing(self, target: str, phase: str, words: str | None = None) -> None:
        """``target``'s cycle is in ``phase``; ``words`` say it with figures (phase by default)."""
        with self._lock:
            before = self._doing.get(target)
            self._doing[target] = (phase, words or phase)
            repeat = before is not None and before[0] == phase
        self._send(force=not repeat)

    def finished(self, target: str, outcome: str, failing: Iterable[str]) -> None:
        with self._lock:
            self._doing.pop(target, None)
            self._last = (target, outcome, self._clock())
            self._failing = sorted(failing)
            self._note = ""
        self._send(force=True)

    def drop(self, target: str) -> None:
        """``target``'s cycle ended without ``finished`` (it raised): no longer shown running."""
        with self._lock:
            running = self._doing.pop(target, None) is not None
        if running:
            self._send(force=True)

    def text(self) -> str:
        with self._lock:
            if self._doing:
                parts = [f"{t}: {words}" for t, (_, words) in sorted(self._doing.items())]
            elif self._last is None:
                parts = ["idle; no cycle yet"]
            else:
                target, outcome, at = self._last
                clock = time.strftime("%H:%M:%S", time.gmtime(at))
                parts = [f"idle; last cycle {outcome} {clock} UTC ({target})"]
            if self._failing:
                parts.append("failing: " + ", ".join(self._failing))
            if self._note:
                parts.append(self._note)
            parts.append(f"{self._targets} target(s)")
        return "; ".join(parts)

    def _send(self, *, force: bool) -> None:
        now = time.monotonic()
        if not force and now - self._sent_at < self.min_gap:
            return
        self._sent_at = now
        self.notifier.status(self.text())


def _socket_address(value: str | None) -> str | None:
    if not value:
        return None
    if value.startswith("@"):
        return "\0" + value[1:]  # Linux abstract namespace
    if value.startswith("/"):
        return value
    # e.g. vsock:... (systemd 254+ for VMs): not something a host daemon is handed
    log.warning("NOTIFY_SOCKET=%r is not a Unix socket path; not notifying", value)
    return None


def _one_line(text: str) -> str:
    # a newline would start a new assignment in the datagram
    return " ".join(text.split())
