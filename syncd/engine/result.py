"""What a cycle is given and what it gives back.

``CycleOptions`` come in from the CLI or the daemon (dry run, the mass-delete override, progress,
the outbox's recorder, the shutdown check); a ``CycleResult`` goes out: the outcome, its
message, the counts behind the one-line summary and the run record, and the calls a plan shows.
Each remote-born change applied to the mirror is handed to ``on_remote_change`` as a
``syncd.core.projection.RemoteChange``.

The outcome follows from the counts alone (``CycleResult.conclude``), and the exit code from the
outcome, so the CLI, the daemon's metrics and ``syncd status`` all read the same thing. Only a
cycle that did all its work with its lease held to the end is ``converged``: one whose export was
incomplete is ``partial``, one that ended early (its lease lost, a stop requested) is ``stopped``,
and neither exits 0.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlmodel import Session

from syncd.core.projection import RemoteChange
from syncd.providers.base import RemoteContact
from syncd.store.lease import Lease

#: (stage, how many so far, the total where one is known): "exporting", "exported", "staged
#: local", "differing keys", "calls sent", "rows sent" (of the rows the plan sends), and
#: ``RATE_LIMIT_WAIT`` (the seconds, rounded up, of a wait for the provider's rate limit that
#: starts now)
Progress = Callable[[str, int, int | None], None]
RATE_LIMIT_WAIT = "waiting for the rate limit (s)"


@dataclass
class CycleOptions:
    dry_run: bool = False
    allow_mass_delete: bool = False
    progress: Progress | None = None
    # Called inside the transaction that applies a remote-born change to the mirror, so that
    # what it records (the outbox) commits or rolls back together with the change. What it
    # returns (the event's id and kind) goes into the key's history row.
    on_remote_change: Callable[[Session, RemoteChange], Mapping[str, str] | None] | None = None
    # Asked between batches: when it says stop, the cycle ends after the batch in flight.
    should_stop: Callable[[], bool] | None = None
    # The target's lease the cycle runs under: asked between batches like ``should_stop``, and
    # asked of the store before the cycle reports, so a cycle that was not sure of its lease to
    # the end reports "stopped", never "converged".
    lease: Lease | None = None
    cycle_id: str | None = None  # given by the daemon so its log lines can carry it
    holder: str | None = None  # the process holding the target's lease, kept in the run record
    # A cycle narrowed to a few keys, their remote rows read one by one (``syncd.engine.single``)
    # instead of exported; None: the whole list.
    scope: Scope | None = None
    # The other targets on the same provider account (``Config.account_peers``): a contact one
    # of them took off its list is still in the account, with its tags.
    peers: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Scope:
    """The keys a narrowed cycle decides, and each one's remote row as it was just read. Only
    these keys are staged and compared; nothing is concluded about any other."""

    remote: Mapping[str, RemoteContact]


@dataclass(frozen=True, slots=True)
class PlannedCall:
    method: str
    op: str
    rows: int
    columns: tuple[str, ...]
    overwrite_tags: bool
    overwrite_lists: bool
    first_rows: tuple[dict[str, str], ...]


@dataclass
class CycleResult:
    target: str
    cycle_id: str
    # converged | awaiting | rejected | conflicts | partial (the export was incomplete) |
    # refused | stopped (lease lost, stop requested) | unreachable | failed | planned (a dry
    # run); "running" until the cycle ends
    outcome: str = "running"
    message: str = ""
    export_complete: bool = True
    counts: Counter[str] = field(default_factory=Counter)
    rejected_codes: Counter[str] = field(default_factory=Counter)  # provider code -> rows
    unsupported: list[str] = field(default_factory=list)  # first contacts the provider cannot serve
    calls: list[PlannedCall] = field(default_factory=list)
    api_calls: int = 0
    write_calls: int = 0

    @property
    def exit_code(self) -> int:
        """0 only for a cycle that did all its work; a partial or stopped one did not."""
        if self.outcome in ("converged", "planned"):
            return 0
        if self.outcome in ("unreachable", "failed"):
            return 3
        return 1

    def summary(self) -> dict[str, Any]:
        c = self.counts
        return {
            "target": self.target,
            "cycle": self.cycle_id,
            "outcome": self.outcome,
            "message": self.message,
            "export_complete": self.export_complete,
            "pushed": c["create"] + c["update"],
            "created": c["create"],
            "updated": c["update"],
            "deleted": c["delete"] + c["exclude"],
            "pulled": c["pulled"],
            "removed_local": c["removed_local"],
            "rejected": c["rejected"] + c["held_rejected"],
            "conflicts": c["conflicts_open"],
            "first_meetings_held": c["first_meeting_held"],  # of the conflicts: first_sync
            "deferred": c["deferred"],
            "edited_during_cycle": c["edited_during_cycle"],
            "kept_opted_out": c["keep_opted_out"],
            "unsupported": c["unsupported"],
            "withheld_opted_out": c["withheld_opted_out"],
            # members this target cannot match for want of its key (a phone target, no phone)
            "without_key": c["no_key"],
            "awaiting_confirmation": c["awaiting"],
            "still_awaiting": c["still_awaiting"],
            "confirmed_later": c["confirmed_later"],
            "api_calls": self.api_calls,
            "write_calls": self.write_calls,
        }

    def conclude(self, dry_run: bool) -> None:
        """The outcome of a cycle that ran to its end, and the message that explains it."""
        self.outcome = "planned" if dry_run else self._outcome()
        said = [self.message]  # what the export said, first
        if self.outcome == "partial":
            said += [self._deferred_message(), self._rejected_message()]
        if self.outcome == "rejected" and not self.unsupported:
            said.append(self._rejected_message())
        self.message = "; ".join(part for part in said if part)
        if self.unsupported and not self.message:
            more = self.counts["unsupported"] - len(self.unsupported)
            self.message = (
                "cannot be done at this provider: "
                + "; ".join(self.unsupported)
                + (f"; and {more} more" if more > 0 else "")
            )

    def _outcome(self) -> str:
        c = self.counts
        if not self.export_complete:
            # the provider's side was not seen whole: creates and deletes wait (rule 1) and its
            # edits were not read, whatever else this cycle did
            return "partial"
        if c["conflicts_open"]:
            return "conflicts"
        if c["rejected"] or c["held_rejected"] or c["unsupported"]:
            return "rejected"
        if c["awaiting"] or c["still_awaiting"]:
            return "awaiting"  # sent; the callback will confirm (syncd.engine.confirm_later)
        return "converged"

    def _deferred_message(self) -> str:
        c = self.counts
        waiting = [f"{c['deferred']} creates/deletes"] if c["deferred"] else []
        if c["update_deferred"]:  # the reference, or a write re-sent after a lost answer
            waiting.append(f"{c['update_deferred']} updates syncd sends of its own accord")
        return " and ".join(waiting) + " wait for a complete export" if waiting else ""

    def _rejected_message(self) -> str:
        """Why a cycle did not converge although every call was answered: the refused rows."""
        c, codes = self.counts, self.rejected_codes
        parts = []
        if c["rejected"]:
            by_code = ", ".join(f"{code} {n}" for code, n in codes.most_common())
            parts.append(f"{c['rejected']} rows refused by the provider ({by_code})")
        if c["held_rejected"]:
            parts.append(
                f"{c['held_rejected']} rows held since an earlier refusal until their local "
                "record changes"
            )
        return "; ".join(parts)
