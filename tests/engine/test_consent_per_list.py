"""Consent per list (DESIGN §9): a person who leaves one list stays on the others.

Three targets on one Unisender account, one list each, fed by three local lists; one contact on
all three. An opt-out from one list, made at the provider or locally, changes that list only:
in the mirror, at the provider, and in what the other targets push. The contact's own status
(unsubscribed from everything, blocked) still reaches every list.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import World
from sqlalchemy import text

LISTS = ("news", "offers", "events")
EMAIL = "ann@example.com"


class ThreeLists(World):
    """``World``'s account with three lists, a target per list, the contact on all three."""

    def __init__(self, tmp_path: Path, store_url: str) -> None:
        super().__init__(tmp_path, store_url)
        self.ids = {"news": self.list_id}
        self.ids |= {name: self.emu.add_list(name.title()) for name in LISTS[1:]}
        self.config = self.config_of(
            [self.target_of(name, self.ids[name], fields={"Name": "name"}) for name in LISTS]
        )

    def states(self) -> dict[str, str | None]:
        return {name: self.consent(EMAIL, name)[1] for name in LISTS}

    def remote_unsubscribed(self) -> set[int]:
        return set(self.emu.get(EMAIL)["unsubscribed"])

    def set_local_state(self, list_name: str, state: str) -> None:
        with self.db.begin() as conn:
            conn.execute(
                text(
                    "UPDATE membership SET state = :s WHERE list_name = :l AND contact_id = "
                    "(SELECT id FROM contact WHERE email = :e)"
                ),
                {"s": state, "l": list_name, "e": EMAIL},
            )


@pytest.fixture
def three(tmp_path: Path, store_url: str) -> Iterator[ThreeLists]:
    w = ThreeLists(tmp_path, store_url)
    w.ingest([{"email": EMAIL, "name": "Ann", "lists": list(LISTS)}])
    assert all(r.outcome == "converged" for r in w.cycle_all())
    assert w.emu.get(EMAIL)["email_status"] not in ("unsubscribed", "blocked")
    yield w
    w.db.dispose()


def test_a_list_opt_out_at_the_provider_changes_that_list_only(three: ThreeLists) -> None:
    three.emu.unsubscribe(EMAIL, three.ids["offers"])
    status_before = three.emu.get(EMAIL)["email_status"]
    calls = three.import_calls()

    results = three.cycle_all()

    assert [r.outcome for r in results] == ["converged"] * 3
    assert three.import_calls() == calls  # nothing pushed anywhere
    assert three.consent(EMAIL)[0] == "active"  # the contact's own status is untouched
    assert three.states() == {"news": "active", "offers": "unsubscribed", "events": "active"}
    contact = three.emu.get(EMAIL)
    assert contact["email_status"] == status_before
    assert three.remote_unsubscribed() == {three.ids["offers"]}
    assert set(contact["lists"]) == {three.ids["news"], three.ids["events"]}
    assert all(r.write_calls == 0 for r in three.cycle_all())  # and it stays converged


def test_a_local_list_opt_out_is_pushed_to_that_list_only(three: ThreeLists) -> None:
    three.set_local_state("events", "unsubscribed")
    status_before = three.emu.get(EMAIL)["email_status"]

    results = {r.target: r for r in three.cycle_all()}

    assert results["events"].write_calls == 1
    assert results["news"].write_calls == results["offers"].write_calls == 0
    assert three.remote_unsubscribed() == {three.ids["events"]}
    assert three.emu.get(EMAIL)["email_status"] == status_before  # never an account opt-out
    assert three.consent(EMAIL)[0] == "active"
    assert all(r.write_calls == 0 for r in three.cycle_all())


def test_a_list_opt_out_made_at_the_provider_is_never_reactivated(three: ThreeLists) -> None:
    three.emu.unsubscribe(EMAIL, three.ids["news"])
    three.cycle_all()
    # the local side insists: back on the list, active, and edited
    three.set_local_state("news", "active")
    three.ingest([{"email": EMAIL, "name": "Ann K"}])
    for _ in range(2):
        three.cycle_all()
        assert three.remote_unsubscribed() == {three.ids["news"]}
    assert three.states()["news"] == "unsubscribed"  # the provider's opt-out came back in
    assert three.emu.get(EMAIL)["fields"]["Name"] == "Ann K"  # the edit went out everywhere


def test_an_account_opt_out_still_reaches_every_list(three: ThreeLists) -> None:
    three.emu.unsubscribe(EMAIL)  # the address as a whole
    three.cycle_all()
    assert three.consent(EMAIL)[0] == "unsubscribed"
    assert three.states() == dict.fromkeys(LISTS, "active")  # the lists keep their own state
    assert all(r.write_calls == 0 for r in three.cycle_all())


def test_a_list_opt_out_of_a_contact_deleted_locally_keeps_its_record(three: ThreeLists) -> None:
    three.emu.unsubscribe(EMAIL, three.ids["offers"])
    three.cycle_all()
    three.ingest([{"email": EMAIL, "delete": 1}])
    results = {r.target: r for r in three.cycle_all()}
    # deleting it would erase the record of its opt-out from that list (DESIGN §8): the
    # other lists' targets take it off their lists instead of deleting it from the account
    assert results["offers"].summary()["kept_opted_out"] == 1
    contact = three.emu.get(EMAIL)
    assert contact is not None and three.remote_unsubscribed() == {three.ids["offers"]}
    assert not set(contact["lists"]) & {three.ids["news"], three.ids["events"]}
    assert all(r.write_calls == 0 for r in three.cycle_all())


def test_a_contact_deleted_locally_with_no_opt_out_anywhere_is_deleted(three: ThreeLists) -> None:
    three.ingest([{"email": EMAIL, "delete": 1}])
    assert sum(r.summary()["deleted"] for r in three.cycle_all()) >= 1
    assert three.emu.get(EMAIL) is None


def test_a_whole_opt_out_lifted_locally_is_not_taken_back_from_another_list(
    three: ThreeLists,
) -> None:
    """Found by the property test. A whole opt-out made locally reached 'offers' as the list's
    mark only (Unisender keeps a `new` address's status). The contact then left 'offers', joined
    'news' and was made active again, locally: 'news' creates it active, which makes the address
    active at the provider. 'offers' still shows its list mark and sees the edit 'news' made:
    the mark is that list's opt-out, not the contact's, so the mirror stays active."""
    bob = "bob@example.com"
    three.ingest([{"email": bob, "name": "Bob", "unsubscribed_lists": ["offers"]}])
    three.cycle_all()
    three.ingest([{"email": bob, "status": "unsubscribed"}])
    three.cycle_all()
    three.ingest([{"email": bob, "name": "Bob K", "lists": ["news"]}])
    three.ingest([{"email": bob, "status": "active"}])

    results = three.cycle_all()

    assert [r.outcome for r in results] == ["converged"] * 3
    assert three.consent(bob, "news") == ("active", "active")
    contact = three.emu.get(bob)
    assert contact["email_status"] not in ("unsubscribed", "blocked")
    assert three.ids["news"] in contact["lists"]
    assert three.ids["offers"] in contact["unsubscribed"]  # the list's opt-out is kept
    assert three.consent(bob, "offers")[1] in (None, "unsubscribed")
    for again in three.cycle_all():
        assert again.write_calls == 0, (again.target, again.summary())
    after = {r.target: r.summary() for r in three.cycle_all()}
    assert all(s.get("pulled", 0) == 0 for s in after.values()), after
    assert three.consent(bob, "news") == ("active", "active")


def test_a_whole_opt_out_made_while_leaving_a_list_keeps_the_contact_off_it(
    three: ThreeLists,
) -> None:
    """Found by the property test. The contact leaves 'offers' and opts out as a whole, locally;
    'news' pushes the opt-out, and the name edited with it, which 'offers' then sees at the
    provider (one account, shared fields). That is the mirror's own data, not an edit there:
    'offers' takes the contact off its list, and the mirror's contact stays opted out (once,
    the edit won over leaving the list and the pull made the contact active again; then it
    came back onto 'offers', opted out)."""
    three.ingest([{"email": EMAIL, "name": "Ann K", "lists": ["news"]}])
    three.ingest([{"email": EMAIL, "status": "unsubscribed"}])

    results = {r.target: r for r in three.cycle_all()}

    assert all(r.outcome == "converged" for r in results.values())
    assert three.consent(EMAIL, "news")[0] == "unsubscribed"
    assert three.consent(EMAIL, "offers")[1] is None  # not brought back
    contact = three.emu.get(EMAIL)
    out = contact["email_status"] in ("unsubscribed", "blocked")
    assert out or three.ids["news"] in contact["unsubscribed"]
    assert three.ids["offers"] not in contact["lists"]
    for again in three.cycle_all():
        assert again.write_calls == 0, (again.target, again.summary())
    assert three.consent(EMAIL, "news")[0] == "unsubscribed"


def test_a_contact_moved_to_another_list_of_the_account_takes_its_tags_along(
    three: ThreeLists,
) -> None:
    """Found by the property test. Tags belong to the account's contact, not to a list: the
    contact leaves 'news' for 'offers' and loses a tag, locally. 'news' takes it off its list
    (the account keeps it, tags and all); the create on 'offers' starts from what the account
    kept, as a create on 'news' itself would (``OffList``), so the dropped tag goes."""
    bob = "bob@example.com"
    three.ingest([{"email": bob, "name": "Bob", "tags": ["a", "b"], "lists": ["news"]}])
    three.cycle_all()
    assert sorted(three.emu.get(bob)["tags"]) == ["a", "b"]
    three.ingest([{"email": bob, "tags": ["a"], "lists": ["offers"]}])

    three.cycle_all()

    contact = three.emu.get(bob)
    assert set(contact["lists"]) == {three.ids["offers"]}
    assert contact["tags"] == ["a"]
    for again in three.cycle_all():
        assert again.write_calls == 0 and again.summary().get("pulled", 0) == 0, again.target


def test_a_contact_moved_to_a_list_synced_before_the_one_it_left_takes_its_tags_along(
    three: ThreeLists,
) -> None:
    """Found by the property test: the same move the other way round. 'news' syncs first, so
    its create comes while the contact is still on 'offers' (which takes it off afterwards):
    the account holds it with the tags 'offers' last agreed on, and the create starts from
    them, so the tag dropped locally goes instead of coming back into the mirror."""
    bob = "bob@example.com"
    three.ingest([{"email": bob, "name": "Bob", "tags": ["a", "b"], "lists": ["offers"]}])
    three.cycle_all()
    assert sorted(three.emu.get(bob)["tags"]) == ["a", "b"]
    three.ingest([{"email": bob, "tags": ["a"], "lists": ["news"]}])

    results = {r.target: r for r in three.cycle_all()}

    assert all(r.outcome == "converged" for r in results.values()), results
    contact = three.emu.get(bob)
    assert set(contact["lists"]) == {three.ids["news"]}
    assert contact["tags"] == ["a"]
    assert {name: three.consent(bob, name)[1] for name in LISTS} == {
        "news": "active", "offers": None, "events": None
    }  # fmt: skip
    for again in three.cycle_all():
        assert again.write_calls == 0 and again.summary().get("pulled", 0) == 0, again.target


def test_a_contact_back_on_a_list_drops_a_tag_another_list_added_since_it_left(
    three: ThreeLists,
) -> None:
    """Found by the property test. Bob leaves 'news' and gains a tag in one edit: 'news'
    records the account's contact as it took it off (no tags), then 'offers' pushes the new
    tag. Back on 'news' with other tags, the create starts from both records, so the tag
    dropped locally goes although the record of 'news' never saw it."""
    bob = "bob@example.com"
    three.ingest([{"email": bob, "name": "Bob", "tags": [], "lists": ["news", "offers"]}])
    three.cycle_all()
    three.ingest([{"email": bob, "tags": ["c"], "lists": ["offers"]}])
    three.cycle_all()
    assert three.emu.get(bob)["tags"] == ["c"]
    three.ingest([{"email": bob, "tags": ["a", "b"], "lists": ["news"]}])

    results = {r.target: r for r in three.cycle_all()}

    assert all(r.outcome == "converged" for r in results.values()), results
    contact = three.emu.get(bob)
    assert set(contact["lists"]) == {three.ids["news"]}
    assert sorted(contact["tags"]) == ["a", "b"]
    for again in three.cycle_all():
        assert again.write_calls == 0 and again.summary().get("pulled", 0) == 0, again.target


def test_an_edit_pushed_through_another_list_does_not_bring_a_contact_back_to_a_list_it_left(
    three: ThreeLists,
) -> None:
    """Fields belong to the account's contact: 'news' pushes the name edited locally, and the
    other lists' rows show it too. For 'offers' and 'events', which the contact left in the
    same edit, that is the mirror's own data, not an edit at the provider: it does not win over
    leaving the list (before, the contact came back onto both lists in the mirror)."""
    three.ingest([{"email": EMAIL, "name": "Ann K", "lists": ["news"]}])

    results = {r.target: r for r in three.cycle_all()}

    assert all(r.outcome == "converged" for r in results.values())
    assert results["offers"].summary().get("pulled", 0) == 0
    assert three.states() == {"news": "active", "offers": None, "events": None}
    contact = three.emu.get(EMAIL)
    assert set(contact["lists"]) == {three.ids["news"]}
    assert contact["fields"]["Name"] == "Ann K"
    for again in three.cycle_all():
        assert again.write_calls == 0 and again.summary().get("pulled", 0) == 0, again.target
    assert three.states() == {"news": "active", "offers": None, "events": None}


def test_a_contact_opted_out_at_the_provider_joins_another_list_opted_out(
    three: ThreeLists,
) -> None:
    """Found by the property test. Bob's opt-out as a whole, made locally, reached the
    provider with 'news'. He is then made active again locally and moved to 'offers': the
    create on 'offers' cannot make the address active (rule 3), so the provider's opt-out
    wins there as on 'news', in this cycle, not in the next one's pull."""
    bob = "bob@example.com"
    three.ingest([{"email": bob, "name": "Bob", "lists": ["news"]}])
    three.ingest([{"email": bob, "status": "unsubscribed"}])
    three.cycle_all()
    assert three.emu.get(bob)["email_status"] == "unsubscribed"
    three.ingest([{"email": bob, "status": "active"}])
    three.ingest([{"email": bob, "name": "Bob", "lists": ["offers"]}])

    results = {r.target: r for r in three.cycle_all()}

    assert all(r.outcome == "converged" for r in results.values()), results
    contact = three.emu.get(bob)
    assert contact["email_status"] == "unsubscribed"  # never made active
    assert three.ids["offers"] in contact["lists"] + contact["unsubscribed"]
    assert three.consent(bob, "offers")[0] == "unsubscribed"  # the provider's opt-out wins
    for again in three.cycle_all():
        assert again.write_calls == 0 and again.summary().get("pulled", 0) == 0, again.target
    assert three.consent(bob, "offers")[0] == "unsubscribed"


def test_a_list_opt_out_left_behind_is_not_revived_by_the_mirrors_own_edit(
    three: ThreeLists,
) -> None:
    """Found by the property test. Pat left 'news' (the provider keeps the list's opt-out:
    it stays there as the record), then moved locally to 'offers' with a name and opted out as
    a whole. 'offers' creates Pat, name and all, in the account; the next cycle 'news' sees the
    name at the provider. That is the mirror's own data, not an edit there: Pat stays off
    'news' and nothing more is written (once, Pat came back onto 'news' in the mirror, and
    'news' wrote the opt-out again)."""
    pat = "pat@example.com"
    three.ingest([{"email": pat, "unsubscribed_lists": ["news"]}])
    three.cycle_all()
    assert three.ids["news"] in three.emu.get(pat)["unsubscribed"]
    three.ingest([{"email": pat, "status": "unsubscribed"}])
    three.ingest([{"email": pat, "name": "Pat", "lists": ["offers"]}])

    assert all(r.outcome == "converged" for r in three.cycle_all())

    for again in three.cycle_all():
        assert again.write_calls == 0, (again.target, again.calls)
        assert again.summary().get("pulled", 0) == 0, again.target
    assert three.consent(pat, "news")[1] is None  # still off 'news' in the mirror
    assert three.consent(pat, "offers") == ("unsubscribed", "active")
    contact = three.emu.get(pat)
    assert contact["fields"]["Name"] == "Pat"
    assert {three.ids["news"], three.ids["offers"]} <= set(contact["unsubscribed"])
