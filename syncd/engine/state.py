"""The state one cycle carries from step to step.

``CycleState`` is what every step of a cycle takes: the target, its provider and the options it
was started with, what follows from them (the provider's capabilities, the mirror's view of the
target, the reconciliation rules), the result being filled in, and what one step hands to a
later one: the owners of remote rows that are syncd's own (found once the stage is written,
read by every decision), the decisions waiting for their call's answer (from the chunk that
batched them to the push that reads the answer) and the keys left differing on purpose (their
rejection or conflict stays when the cycle ends), and the run record its history rows name.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.engine import Engine

from syncd.config import TargetConfig
from syncd.core.reconcile import ABSENCE_EXPORTS, Decision, Rules
from syncd.engine.references import Owners
from syncd.engine.result import CycleOptions, CycleResult
from syncd.errors import Stopped
from syncd.providers.base import Capabilities, Provider
from syncd.store import mirror


@dataclass
class CycleState:
    db: Engine
    target: TargetConfig
    provider: Provider
    options: CycleOptions
    caps: Capabilities
    view: mirror.LocalView
    rules: Rules
    result: CycleResult
    owners: Owners = field(default_factory=Owners)  # remote rows that are syncd's own
    pending: dict[str, Decision] = field(default_factory=dict)  # batched, awaiting their answer
    held_keys: set[str] = field(default_factory=set)  # their rejection or conflict stays
    # the remote side is this cycle's complete export (``remote_seen``), not the base standing
    # in for it (no export, or one that did not complete: rule 1)
    remote_read: bool = False
    planned_rows: int = 0  # rows the plan sends to the provider (counted before any is sent)
    rows_sent: int = 0
    run_id: int | None = None  # the run record the cycle's history rows point to
    # what each write to the mirror changed and the outbox event it recorded, by key, until the
    # key's history row is written (in its chunk, or after its call for a merge)
    local_notes: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def start(
        cls, db: Engine, target: TargetConfig, provider: Provider, options: CycleOptions
    ) -> CycleState:
        return cls(
            db=db,
            target=target,
            provider=provider,
            options=options,
            caps=provider.capabilities,
            view=mirror.LocalView.of(target, list_consent=provider.capabilities.list_consent),
            rules=Rules(
                policy=target.policy_for,
                edit_beats_delete=target.on_edit_delete == "edit",
                reference=target.reference_field,
                first_sync=target.first_sync,
                # an export may be cut short without a sign: absence is trusted after several
                absence_exports=ABSENCE_EXPORTS,
            ),
            result=CycleResult(target.name, options.cycle_id or uuid.uuid4().hex[:12]),
        )

    @property
    def dry_run(self) -> bool:
        return self.options.dry_run

    def progress(self, stage: str, n: int, total: int | None = None) -> None:
        if self.options.progress:
            self.options.progress(stage, n, total)

    def check_stop(self) -> None:
        """Between batches: end the cycle once its lease is lost or a stop is asked for."""
        lease = self.options.lease
        if lease is not None and lease.lost.is_set():
            raise Stopped(self._lease_lost(lease.why))
        if self.options.should_stop is not None and self.options.should_stop():
            raise Stopped("a stop was requested")

    def confirm_lease(self) -> None:
        """Before the cycle reports: the store must still show its lease as this process's.

        A cycle with nothing to push never reaches a check between batches, and the renewal
        thread may not have noticed a lapse yet; without this a cycle that lost its lease (to a
        stall, or to another replica) while staging would report "converged".
        """
        lease = self.options.lease
        if lease is not None and not lease.confirm():
            raise Stopped(self._lease_lost(lease.why))

    def _lease_lost(self, why: str) -> str:
        return f"the lease on {self.target.name} was lost: {why or 'reason unknown'}"
