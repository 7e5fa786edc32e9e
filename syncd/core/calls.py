"""What a write call is, in the words the batcher plans in and every adapter speaks.

``Capabilities`` say what a provider can do; ``syncd.core.batching`` groups ``RowChange`` s into
``PushCall`` s from them alone, never from a provider's name, and an adapter
(``syncd.providers.base.Provider``) translates one call to the wire. A call the provider confirms
later carries a ``JobTicket``. All of it is plain data, so the planner stays in the pure core.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from syncd.core.projection import Projection

Op = Literal["create", "update", "delete", "exclude"]


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a provider can do; the engine plans from this alone."""

    rows_per_call: int
    fields_per_call: int
    delete: bool = True  # can remove a contact
    exclude: bool = True  # can take a contact off the list without deleting it
    tags: bool = True
    max_tags: int | None = None
    export: bool = True  # can the remote list be read back? If not, remote is taken as the base
    # can keep syncd's stable reference in a custom field and give it back in the export
    # (``reference_field``): needs both custom fields and an export
    reference: bool = False
    # Statuses the provider can hold for a contact on the list, in syncd's vocabulary. Statuses
    # outside this set fold onto the nearest one (blocked -> unsubscribed) on both sides.
    statuses: frozenset[str] = frozenset({"active", "unsubscribed"})
    # Keeps a person's opt-out from one list apart from the contact's own status, and shows it
    # in the export (Unisender's ``*_unsubscribed_list_ids``): a list opt-out then travels as
    # one, both ways. False: the provider holds one status per contact of the list, so a local
    # list opt-out is sent as that status (DESIGN §9; ``syncd.engine.stage.project_local``).
    list_consent: bool = False
    # Some writes are only accepted by the answer and confirmed later by the provider calling
    # syncd back (Netcore's bulk upload). The engine then hosts the call's file and keeps the
    # rows waiting (``syncd.engine.confirm_later``) instead of moving the base on the answer.
    confirms_later: bool = False
    # An import names its columns, and the provider leaves the fields of an existing contact
    # that a call does not name as they are: an update then carries only the fields that
    # changed, and the tags only if they changed (``syncd.core.batching``), so an edit made at the
    # provider meanwhile to another field, or a tag removed there, survives. False (the safe
    # default): the provider may replace or reset what it is not given, so every update
    # carries every mapped field and the tags.
    partial_update: bool = False
    # Reads one contact by its key (Unisender's ``getContact``): a provider's event notification
    # is then followed by that read and the key's own reconcile, instead of waiting for the
    # next export (``syncd.engine.single``).
    read_one: bool = False
    # How the provider notifies syncd of a change at its side: "" none, "api" handlers set
    # through its API (Unisender's ``setHook``), "opt_out" an opt-out callback whose URL is
    # pasted into its interface (Octopush's STOP callback).
    hooks: str = ""

    def fold_status(self, status: str) -> str:
        if status in self.statuses:
            return status
        return "unsubscribed" if status != "active" else "active"


@dataclass(frozen=True, slots=True)
class RowChange:
    """One contact in one call: what the remote should hold afterwards."""

    op: Op
    row: Projection  # the desired remote state (for delete/exclude: the last known state)
    # the remote state the change starts from (None: absent); with ``partial_update`` an
    # update writes only the fields (and tags) in which ``row`` differs from it
    remote: Projection | None = None


def create_of(row: Projection) -> RowChange:
    """``RowChange("create", row)``, its slots set one by one: the frozen dataclass's
    ``__init__`` sets each through ``object.__setattr__`` (0.43 µs against 0.25), and a first
    push makes one a contact."""
    change = _new(RowChange)
    _set_op(change, "create")
    _set_row(change, row)
    _set_remote(change, None)
    return change


_new = object.__new__
_set_op = vars(RowChange)["op"].__set__
_set_row = vars(RowChange)["row"].__set__
_set_remote = vars(RowChange)["remote"].__set__


@dataclass(slots=True)
class JobTicket:
    """One call of a batch the provider confirms later: where it fetches the call's file and
    where it reports back. The secrets exist only here, in memory; the store keeps their hashes.
    """

    job_id: str
    part: int
    file_secret: str
    callback_secret: str
    requestid: str | None = None  # filled in by the adapter from the provider's answer

    @property
    def file_path(self) -> str:
        """The listener path serving the file (behind the target's ``public_url``)."""
        return f"/jobs/{self.job_id}/{self.part}/file/{self.file_secret}"

    @property
    def callback_path(self) -> str:
        return f"/jobs/{self.job_id}/{self.part}/callback/{self.callback_secret}"


@dataclass(frozen=True, slots=True)
class PushCall:
    """One write call: rows that share an operation, a header and a pair of flags."""

    op: Op
    columns: tuple[str, ...]  # the remote custom-field names this call carries, besides the key
    rows: tuple[RowChange, ...]
    with_status: bool = False  # carries a status column
    with_tags: bool = False  # carries a tags column
    overwrite_tags: bool = False  # tags replace rather than add (only when a removal needs it)
    overwrite_lists: bool = False  # never set for single-list targets; see README
    job: JobTicket | None = None  # set for calls the provider confirms later
