"""Property: random local edits, remote edits and cycles always converge, safely.

A Hypothesis state machine edits the mirror (ingest files) and the emulated provider (edits,
unsubscribes, blocks, deletes, sign-ups) at random and runs cycles. After every cycle that reports
convergence it checks that both sides agree on every synced field, that one more cycle writes
nothing, and that no contact ever opted out at the provider is active there.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pytest
from conftest import World
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

PEOPLE = [f"p{i}@example.com" for i in range(6)]
person = st.sampled_from(PEOPLE)
name = st.sampled_from(["Ann", "Bob", "Cy", ""])
city = st.sampled_from(["Minsk", "Brest", ""])
tags = st.lists(st.sampled_from(["a", "b", "c"]), max_size=3, unique=True)


class SyncMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        # first_sync = "local": a sign-up meeting a local contact is settled, not held, so that
        # every cycle can converge (held first meetings: tests/engine/test_first_sync.py)
        self.world = World(Path(tempfile.mkdtemp(prefix="syncd-prop-")), first_sync="local")
        self.list_id = self.world.list_id
        self.opted_out_remotely: set[str] = set()

    # -- local edits ------------------------------------------------------------------------

    @rule(email=person, n=name, c=city, t=tags)
    def local_upsert(self, email: str, n: str, c: str, t: list[str]) -> None:
        self.world.ingest([{"email": email, "name": n, "city": c, "tags": t, "lists": ["news"]}])

    @rule(email=person, n=name)
    def local_edit(self, email: str, n: str) -> None:
        self.world.ingest([{"email": email, "name": n}])

    @rule(email=person)
    def local_delete(self, email: str) -> None:
        self.world.ingest([{"email": email, "delete": 1}])

    @rule(email=person)
    def local_unsubscribe(self, email: str) -> None:
        self.world.ingest([{"email": email, "status": "unsubscribed"}])

    @rule(email=person)
    def local_reactivate(self, email: str) -> None:
        """An explicit local `status=active`: must never resubscribe a provider opt-out."""
        self.world.ingest([{"email": email, "status": "active"}])

    # -- remote edits -----------------------------------------------------------------------

    def _remote(self, email: str) -> dict[str, Any] | None:
        return self.world.remote().get(email)

    @rule(email=person, c=city)
    def remote_edit(self, email: str, c: str) -> None:
        if self._remote(email):
            self.world.emu.edit(email, City=c)

    @rule(email=person, t=tags)
    def remote_tags(self, email: str, t: list[str]) -> None:
        if self._remote(email):
            self.world.emu.set_tags(email, t)

    @rule(email=person, scope=st.sampled_from(["list", "account", "block"]))
    def remote_opt_out(self, email: str, scope: str) -> None:
        if not self._remote(email):
            return
        if scope == "list":
            self.world.emu.unsubscribe(email, self.list_id)
        elif scope == "account":
            self.world.emu.unsubscribe(email)
        else:
            self.world.emu.block(email)
        self.opted_out_remotely.add(email)

    @rule(email=person)
    def remote_delete(self, email: str) -> None:
        if self.world.emu.get(email) is not None:
            self.world.emu.delete(email)
            self.opted_out_remotely.discard(email)  # the person's record is gone at the provider

    @rule(email=person, n=name)
    def remote_sign_up(self, email: str, n: str) -> None:
        if self.world.emu.get(email) is None:
            self.world.emu.sign_up(email, self.list_id, fields={"Name": n} if n else None)

    # -- cycles -----------------------------------------------------------------------------

    @rule()
    def cycle(self) -> None:
        result = self.world.cycle()
        assert result.outcome == "converged", (result.outcome, result.message, result.summary())
        self.check_agreement()
        again = self.world.cycle()
        assert again.write_calls == 0, again.calls
        assert again.outcome == "converged"

    def check_agreement(self) -> None:
        local, remote = self.world.local(), self.world.remote()
        assert not set(local) - set(remote), set(local) - set(remote)
        for email in set(remote) - set(local):
            # deleted locally but opted out at the provider: kept there as the opt-out record
            assert self.world.opted_out_remotely(email), email
        for email, l_row in local.items():
            r = remote[email]
            assert (l_row.get("name") or None) == (r["fields"].get("Name") or None), email
            assert (l_row.get("city") or None) == (r["fields"].get("City") or None), email
            assert sorted(l_row.get("tags", [])) == sorted(r["tags"]), email
            local_out = l_row["status"] in ("unsubscribed", "blocked")
            assert local_out == self.world.opted_out_remotely(email), email

    @invariant()
    def never_resubscribed(self) -> None:
        for email in self.opted_out_remotely:
            if self.world.emu.get(email) is not None and email in self.world.remote():
                assert self.world.opted_out_remotely(email), email


TestConvergence = SyncMachine.TestCase
TestConvergence.settings = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
pytestmark = pytest.mark.slow
