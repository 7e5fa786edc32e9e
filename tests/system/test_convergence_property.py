"""Property: random local edits, remote edits and cycles always converge, safely.

A Hypothesis state machine edits the mirror (ingest files) and the emulated provider (edits,
unsubscribes from one list or from everything, blocks, deletes, sign-ups) at random and runs
cycles of two targets: lists "news" and "offers" of one account. After every cycle that reports
convergence it checks that both sides agree on every synced field and on each list's consent,
that one more cycle writes nothing, that no contact ever opted out at the provider is active
there, and that consent per list holds (DESIGN §9): no list a contact left is re-activated, and
an opt-out from one list never shows on another list or as the contact's own status.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import pytest
from conftest import World
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from sqlalchemy import text

PEOPLE = [f"p{i}@example.com" for i in range(6)]
person = st.sampled_from(PEOPLE)
name = st.sampled_from(["Ann", "Bob", "Cy", ""])
city = st.sampled_from(["Minsk", "Brest", ""])
tags = st.lists(st.sampled_from(["a", "b", "c"]), max_size=3, unique=True)
LISTS = ("news", "offers")
a_list = st.sampled_from(LISTS)


class TwoLists(World):
    """``World``'s account with a second list, and a target per list."""

    def __init__(self, tmp: Path) -> None:
        super().__init__(tmp)
        self.ids = {"news": self.list_id, "offers": self.emu.add_list("Offers")}
        # a sign-up meeting a local contact is settled, not held, so that every cycle can
        # converge (held first meetings: tests/engine/test_first_sync.py)
        self.config = self.config_of(
            [self.target_of(name, self.ids[name], first_sync="local") for name in LISTS]
        )

    def local_of(self, list_name: str) -> dict[str, dict[str, Any]]:
        """The live contacts on a local list, with their state there."""
        with self.db.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT c.email, c.fields, c.tags, c.status, m.state FROM contact c "
                    "JOIN membership m ON m.contact_id = c.id "
                    "WHERE m.list_name = :l AND NOT c.deleted"
                ),
                {"l": list_name},
            ).all()
        return {
            email: {**json.loads(fields), "tags": json.loads(tags), "status": status,
                    "state": state}
            for email, fields, tags, status, state in rows
        }  # fmt: skip


class SyncMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.world = TwoLists(Path(tempfile.mkdtemp(prefix="syncd-prop-")))
        self.ids = self.world.ids
        # (email, list name) opted out at the provider, from that list or from everything
        self.opted_out_remotely: set[tuple[str, str]] = set()
        # the opt-outs anyone made: the provider may show no other (consent per list)
        self.account_opt_outs: set[str] = set()
        self.list_opt_outs: set[tuple[str, int]] = set()

    # -- local edits ------------------------------------------------------------------------

    @rule(email=person, n=name, c=city, t=tags, lists=st.sets(a_list, min_size=1))
    def local_upsert(self, email: str, n: str, c: str, t: list[str], lists: set[str]) -> None:
        self.world.ingest(
            [{"email": email, "name": n, "city": c, "tags": t, "lists": sorted(lists)}]
        )

    @rule(email=person, n=name)
    def local_edit(self, email: str, n: str) -> None:
        self.world.ingest([{"email": email, "name": n}])

    @rule(email=person)
    def local_delete(self, email: str) -> None:
        self.world.ingest([{"email": email, "delete": 1}])

    @rule(email=person)
    def local_unsubscribe(self, email: str) -> None:
        self.world.ingest([{"email": email, "status": "unsubscribed"}])
        self.account_opt_outs.add(email)

    def _left(self, email: str) -> set[str]:
        """The local lists the contact has left, as the mirror holds them."""
        return {
            name for name in LISTS
            if self.world.local_of(name).get(email, {}).get("state") == "unsubscribed"
        }  # fmt: skip

    @rule(email=person, list_name=a_list)
    def local_list_unsubscribe(self, email: str, list_name: str) -> None:
        """A contact file's ``unsubscribed_lists``: the lists it has left, this one added."""
        left = sorted(self._left(email) | {list_name})
        self.world.ingest([{"email": email, "unsubscribed_lists": left}])
        self.list_opt_outs.add((email, self.ids[list_name]))

    @rule(email=person, list_name=a_list)
    def local_list_reactivate(self, email: str, list_name: str) -> None:
        """An explicit local re-activation on one list: never over a provider's opt-out."""
        if email in {e for name in LISTS for e in self.world.local_of(name)}:
            left = sorted(self._left(email) - {list_name})
            self.world.ingest([{"email": email, "unsubscribed_lists": left}])

    @rule(email=person)
    def local_reactivate(self, email: str) -> None:
        """An explicit local `status=active`: must never resubscribe a provider opt-out."""
        self.world.ingest([{"email": email, "status": "active"}])

    # -- remote edits -----------------------------------------------------------------------

    def _remote(self, email: str) -> dict[str, Any] | None:
        return self.world.emu.get(email)

    @rule(email=person, c=city)
    def remote_edit(self, email: str, c: str) -> None:
        if self._remote(email):
            self.world.emu.edit(email, City=c)

    @rule(email=person, t=tags)
    def remote_tags(self, email: str, t: list[str]) -> None:
        if self._remote(email):
            self.world.emu.set_tags(email, t)

    @rule(email=person, scope=st.sampled_from(["list", "account", "block"]), list_name=a_list)
    def remote_opt_out(self, email: str, scope: str, list_name: str) -> None:
        contact = self._remote(email)
        if not contact:
            return
        list_id = self.ids[list_name]
        if scope == "list":
            if list_id not in set(contact["lists"]) | set(contact["unsubscribed"]):
                return
            self.world.emu.unsubscribe(email, list_id)
            self.opted_out_remotely.add((email, list_name))
            self.list_opt_outs.add((email, list_id))
            return
        if scope == "account":
            self.world.emu.unsubscribe(email)
        else:
            self.world.emu.block(email)
        self.opted_out_remotely.update((email, name) for name in LISTS)
        self.account_opt_outs.add(email)

    @rule(email=person)
    def remote_delete(self, email: str) -> None:
        if self.world.emu.get(email) is not None:
            self.world.emu.delete(email)
            # the person's record is gone at the provider
            self.opted_out_remotely -= {(email, name) for name in LISTS}

    @rule(email=person, n=name, list_name=a_list)
    def remote_sign_up(self, email: str, n: str, list_name: str) -> None:
        if self.world.emu.get(email) is None:
            self.world.emu.sign_up(email, self.ids[list_name], fields={"Name": n} if n else None)

    # -- cycles -----------------------------------------------------------------------------

    @rule()
    def cycle(self) -> None:
        for result in self.world.cycle_all():
            assert result.outcome == "converged", (
                result.target, result.outcome, result.message, result.summary()
            )  # fmt: skip
        for list_name in LISTS:
            self.check_agreement(list_name)
        for again in self.world.cycle_all():
            assert again.write_calls == 0, (again.target, again.calls)
            assert again.outcome == "converged"

    def check_agreement(self, list_name: str) -> None:
        list_id = self.ids[list_name]
        local = self.world.local_of(list_name)
        remote = {c["email"]: c for c in self.world.emu.contacts_in_list(list_id)}
        assert not set(local) - set(remote), (list_name, set(local) - set(remote))
        for email in set(remote) - set(local):
            # deleted locally but opted out at the provider: kept there as the opt-out record
            assert self._opted_out_at_provider(email, list_id), (list_name, email)
        for email, l_row in local.items():
            r = remote[email]
            where = (list_name, email)
            assert (l_row.get("name") or None) == (r["fields"].get("Name") or None), where
            assert (l_row.get("city") or None) == (r["fields"].get("City") or None), where
            assert sorted(l_row.get("tags", [])) == sorted(r["tags"]), where
            account_out = r["email_status"] in ("unsubscribed", "blocked")
            list_out = list_id in r["unsubscribed"]
            if l_row["status"] in ("unsubscribed", "blocked"):
                # opted out as a whole: at the provider too, or, for an address whose status it
                # keeps (`new`), unsubscribed from the list
                assert account_out or (r["email_status"] == "new" and list_out), where
            else:
                assert not account_out, where
                assert (l_row["state"] == "unsubscribed") == list_out, where

    def _opted_out_at_provider(self, email: str, list_id: int) -> bool:
        contact = self.world.emu.get(email)
        return contact is not None and (
            contact["email_status"] in ("unsubscribed", "blocked")
            or list_id in contact["unsubscribed"]
        )

    @invariant()
    def never_resubscribed(self) -> None:
        for email, list_name in self.opted_out_remotely:
            if email in {c["email"] for c in self.world.emu.contacts_in_list(self.ids[list_name])}:
                assert self._opted_out_at_provider(email, self.ids[list_name]), (email, list_name)

    @invariant()
    def an_opt_out_stays_where_it_was_made(self) -> None:
        """No list a contact did not leave, and no account, shows an opt-out syncd invented."""
        for email in PEOPLE:
            contact = self.world.emu.get(email)
            if contact is None:
                continue
            if contact["email_status"] in ("unsubscribed", "blocked"):
                assert email in self.account_opt_outs, email
            for list_id in contact["unsubscribed"]:
                # an opt-out as a whole is sent with each list's mark (README, consent per list)
                left = (email, list_id) in self.list_opt_outs or email in self.account_opt_outs
                assert left, (email, list_id)


TestConvergence = SyncMachine.TestCase
TestConvergence.settings = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
pytestmark = pytest.mark.slow
