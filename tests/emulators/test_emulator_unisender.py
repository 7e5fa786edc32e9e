"""The Unisender/Selzy emulator against the wire facts (providers/unisender-selzy.md)."""

from __future__ import annotations

import bz2
import csv
import io
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from syncd.emulators.kit import Faults
from syncd.emulators.kit import forms as pp
from syncd.emulators.kit.server import EmulatorServer
from syncd.emulators.unisender import UnisenderEmulator
from syncd.emulators.unisender_import import LOG_CODES

KEY = "secret-key"


@pytest.fixture
def emu() -> UnisenderEmulator:
    emulator = UnisenderEmulator(api_key=KEY, export_polls=2)
    assert emulator.add_list("Newsletter") == 1
    emulator.add_list("Other")
    emulator.add_field("Name")
    emulator.add_field("City")
    return emulator


@pytest.fixture
def client(emu: UnisenderEmulator) -> Iterator[httpx.Client]:
    with httpx.Client(transport=httpx.MockTransport(emu.handle), base_url="http://emu") as c:
        yield c


def call(client: httpx.Client, method: str, **params: Any) -> dict[str, Any]:
    response = client.post(f"/en/api/{method}", data={"api_key": KEY, "format": "json", **params})
    assert response.status_code == 200  # item 6: always 200
    body: dict[str, Any] = response.json()
    return body


def rows(field_names: list[str], data: list[list[str]], **extra: Any) -> dict[str, Any]:
    """importContacts arguments in PHP bracket syntax."""
    params: dict[str, Any] = {f"field_names[{i}]": n for i, n in enumerate(field_names)}
    for r, row in enumerate(data):
        params.update({f"data[{r}][{c}]": v for c, v in enumerate(row)})
    return params | extra


def imp(client: httpx.Client, names: list[str], data: list[list[str]], **kw: Any) -> Any:
    return call(client, "importContacts", **rows(names, data, **kw))["result"]


def contact(emu: UnisenderEmulator, key: str) -> dict[str, Any]:
    found = emu.get(key)
    assert found is not None, key
    return found


# ---- parameter parsing (items 2-5) -------------------------------------------------------------


def test_php_brackets() -> None:
    tree = pp.build(
        [
            ("a[]", "x"),
            ("a[]", "y"),
            ("m[1][2]", "z"),
            ("f[Name]", "Ann"),
            ("a[5]", "q"),
            ("a[]", "r"),
        ]
    )
    assert tree == {
        "a": {"0": "x", "1": "y", "5": "q", "6": "r"},
        "m": {"1": {"2": "z"}},
        "f": {"Name": "Ann"},
    }
    assert pp.string_list(tree["a"]) == ["x", "y", "q", "r"]
    assert pp.split_key("data[0][1]junk") == ["data", "0", "1"]
    assert [pp.as_bool(v) for v in ("1", "True", "true", "", "0", "False")] == [True] * 3 + [
        False
    ] * 3


def test_percent_encoded_out_of_order_and_sparse_cells(
    client: httpx.Client, emu: UnisenderEmulator
) -> None:
    imp(client, ["email", "Name", "City"], [["ann@example.com", "Ann", "Oslo"]])
    # field_names arrive out of order; row 0 has no cell 1 (Name): "not provided", not shifted
    body = (
        "api_key=secret-key&field_names%5B2%5D=City&field_names%5B0%5D=email"
        "&field_names%5B1%5D=Name&data%5B0%5D%5B2%5D=Paris&data%5B0%5D%5B0%5D=ann%40example.com"
    )
    r = client.post(
        "/en/api/importContacts",
        content=body,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert r.json()["result"]["updated"] == 1
    assert contact(emu, "ann@example.com")["fields"] == {"Name": "Ann", "City": "Paris"}


def test_query_body_merge_get_json_junk_and_multipart(
    client: httpx.Client, emu: UnisenderEmulator
) -> None:
    # api_key and field_names in the query, data in the form body
    r = client.post(
        "/ru/api/importContacts",
        params={"api_key": KEY, "field_names[]": "email"},
        data={"data[0][0]": "a@example.com"},
    )
    assert r.json()["result"]["inserted"] == 1
    # every param in the query, a JSON body by mistake (chmerev)
    q = {"api_key": KEY, "field_names[0]": "email", "data[0][0]": "b@example.com"}
    r = client.post("/it/api/importContacts", params=q, json={"headers": {}})
    assert r.json()["result"]["inserted"] == 1
    # GET (theYahia MCP), no format parameter
    assert client.get("/ua/api/getLists", params={"api_key": KEY}).json()["result"][0] == {
        "id": 1,
        "title": "Newsletter",
    }
    # multipart/form-data (WP plugin)
    r = client.post(
        "/en/api/importContacts",
        files={"api_key": (None, KEY), "field_names[0]": (None, "email")},
        data={"data[0][0]": "c@example.com"},
    )
    assert r.json()["result"]["inserted"] == 1
    assert emu.contacts_in_list(1) == []  # no list column: in no list
    # the official PHP wrapper's bzip2 mode: api_key and request_compression in the query
    packed = bz2.compress(b"field_names[0]=email&data[0][0]=d%40example.com")
    r = client.post(
        "/en/api/importContacts",
        params={"api_key": KEY, "request_compression": "bzip2"},
        content=packed,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert r.json()["result"]["inserted"] == 1


def test_subscribe_and_get_contact(client: httpx.Client) -> None:
    done = call(
        client,
        "subscribe",
        list_ids="1",
        double_optin="3",
        tags="a,b",
        **{"fields[email]": "Ann@X.io", "fields[Name]": "Ann"},
    )
    assert done == {"result": {"person_id": 1}}
    got = call(client, "getContact", email="ann@x.io", include_lists="1", include_fields="1")
    assert got["result"]["email"]["status"] == "active"
    assert got["result"]["lists"][0]["id"] == 1 and got["result"]["fields"] == {"Name": "Ann"}
    added = got["result"]["email"]["added_at"]
    assert len(added) == 19 and added[10] == " "  # YYYY-MM-DD hh:mm:ss (item 18)


# ---- importContacts (items 9-13) ---------------------------------------------------------------


def test_import_limits_and_call_errors(client: httpx.Client) -> None:
    big = call(client, "importContacts", **rows(["email"], [[f"u{i}@x.io"] for i in range(501)]))
    assert big == {"error": big["error"], "code": "invalid_arg", "result": ""}
    err = call(client, "importContacts", **rows(["Name"], [["Ann"]]))
    assert err["code"] == "invalid_arg" and err["result"] == ""
    err = call(client, "importContacts", **rows(["email", "Nickname"], [["a@x.io", "A"]]))
    assert "Nickname" in err["error"]
    tags = ",".join(f"t{i}" for i in range(11))
    res = imp(client, ["email", "tags"], [["a@x.io", tags]])
    assert res["log"][0]["code"] == LOG_CODES["too_many_tags"] and res["inserted"] == 0
    assert imp(client, ["email"], [[f"u{i}@x.io"] for i in range(500)])["inserted"] == 500


def test_role_and_invalid_addresses_are_not_imported(client: httpx.Client) -> None:
    res = imp(
        client,
        ["email", "email_list_ids"],
        [["ok@example.com", "1"], ["Info@example.com", "1"], ["not-an-email", "1"]],
    )
    assert res["total"] == 3 and res["inserted"] == 1 and res["invalid"] == 2
    assert res["new_emails"] == 1 and res["role_based"] == 1
    assert [(e["index"], e["code"]) for e in res["log"]] == [
        (1, LOG_CODES["role_address"]),
        (2, LOG_CODES["email_invalid"]),
    ]
    assert "Role-based" in res["log"][0]["message"]


def test_status_defaults_and_stickiness(client: httpx.Client, emu: UnisenderEmulator) -> None:
    res = imp(client, ["email", "phone"], [["a@x.io", ""], ["", "+79261232323"]])
    assert res["inserted"] == 2 and res["new_emails"] == 1
    assert contact(emu, "a@x.io")["email_status"] == "new"
    assert contact(emu, "+79261232323")["phone_status"] == "active"
    imp(client, ["email", "email_status"], [["a@x.io", "active"]])
    assert contact(emu, "a@x.io")["email_status"] == "new"  # only active/inactive can change
    imp(client, ["email", "email_status"], [["b@x.io", "active"]])
    imp(client, ["email", "email_status"], [["b@x.io", "unsubscribed"]])
    res = imp(client, ["email", "email_status"], [["b@x.io", "active"]])
    assert res["updated"] == 1 and res["log"] == []
    assert contact(emu, "b@x.io")["email_status"] == "unsubscribed"


def test_email_and_phone_owned_by_different_contacts(client: httpx.Client) -> None:
    imp(client, ["email", "phone"], [["a@x.io", ""], ["", "+4912345678"]])
    res = imp(client, ["email", "phone"], [["a@x.io", "+4912345678"]])
    assert res["log"][0]["index"] == 0
    assert "already exist but owned by different subscribers" in res["log"][0]["message"]


def test_an_import_holding_a_refused_contact_is_refused_whole_under_its_status(
    client: httpx.Client, emu: UnisenderEmulator
) -> None:
    """``refuse_import`` (also ``POST /_emulator/refuse-import``): a server that answers a row
    it cannot take with an HTTP 4xx and §1.2's envelope instead of 200; nothing applies."""
    refuse = {"key": "Bad@x.io", "status": 400, "message": "Invalid value: bad@x.io"}
    assert client.post("/_emulator/refuse-import", json=refuse).status_code == 200
    data = rows(["email", "email_list_ids"], [["a@x.io", "1"], ["bad@x.io", "1"]])
    response = client.post("/en/api/importContacts", data={"api_key": KEY, **data})
    assert response.status_code == 400
    assert response.json() == {
        "error": "Invalid value: bad@x.io",
        "code": "invalid_arg",
        "result": "",
    }
    assert emu.contacts == {} and emu.faults.injected["import_refused http_400"] == 1
    assert imp(client, ["email", "email_list_ids"], [["a@x.io", "1"]])["inserted"] == 1
    emu.refuse_import("+4912345678", status=422, code="unspecified")
    response = client.post(
        "/en/api/importContacts", data={"api_key": KEY, **rows(["phone"], [["+4912345678"]])}
    )
    assert (
        response.status_code == 422
        and response.json()["error"] == 'Invalid value of field "phone": "+4912345678"'
    )


def test_delete_and_duplicates(client: httpx.Client, emu: UnisenderEmulator) -> None:
    imp(client, ["email"], [["a@x.io"]])
    res = imp(client, ["email", "delete"], [["a@x.io", "1"], ["ghost@x.io", "1"]])
    assert res["deleted"] == 2 and emu.get("a@x.io") is None
    res = imp(client, ["phone"], [["+4912345678"], ["+4912345678"]])
    assert res["inserted"] == 1 and res["log"][0]["code"] == "e_phone_not_unique"


def test_overwrite_tags_and_lists(client: httpx.Client, emu: UnisenderEmulator) -> None:
    imp(client, ["email", "tags", "email_list_ids"], [["a@x.io", "vip,de", "1,2"]])
    imp(client, ["email", "tags"], [["a@x.io", "new"]], overwrite_tags="0")
    assert contact(emu, "a@x.io")["tags"] == ["vip", "de", "new"]
    imp(client, ["email", "tags"], [["a@x.io", "only"]], overwrite_tags="True")
    assert contact(emu, "a@x.io")["tags"] == ["only"]
    imp(client, ["email", "email_list_ids"], [["a@x.io", "2"]], overwrite_lists="1")
    assert contact(emu, "a@x.io")["lists"] == [2]
    bad = imp(client, ["email", "email_list_ids", "email_subscribe_times"], [["a@x.io", "1", ""]])
    assert bad["log"][0]["code"] == LOG_CODES["times_mismatch"]


def test_per_list_unsubscribe_exclude_and_export_columns(
    client: httpx.Client, emu: UnisenderEmulator
) -> None:
    imp(
        client,
        ["email", "email_status", "email_list_ids"],
        [["a@x.io", "active", "1,2"], ["b@x.io", "active", "1"]],
    )
    ok = call(client, "unsubscribe", contact_type="email", contact="a@x.io", list_ids="1")
    assert ok == {"result": {}}
    a = emu.get("a@x.io")
    assert a is not None and a["email_status"] == "active" and a["unsubscribed"] == [1]
    # importing the list again does not re-subscribe (sticky)
    imp(client, ["email", "email_list_ids"], [["a@x.io", "1"]])
    assert contact(emu, "a@x.io")["unsubscribed"] == [1]
    assert call(client, "exclude", contact_type="email", contact="b@x.io", list_ids="1") == {
        "result": {}
    }
    again = call(client, "exclude", contact_type="email", contact="b@x.io", list_ids="1")
    assert again == {"error": 'Contact "b@x.io" not found', "code": "unspecified", "result": ""}
    names = ["email", "email_status", "email_list_ids", "email_unsubscribed_list_ids"]
    page = call(client, "exportContacts", list_id="1", **{"field_names[]": names})["result"]
    assert page == {"field_names": names, "data": [["a@x.io", "active", "2", "1"]]}
    assert [c["email"] for c in emu.contacts_in_list(1)] == ["a@x.io"]


def test_is_opted_out_follows_the_export_rule(client: httpx.Client, emu: UnisenderEmulator) -> None:
    assert not emu.is_opted_out("ghost@x.io", 1)  # absent
    imp(
        client,
        ["email", "email_status", "email_list_ids"],
        [[f"{n}@x.io", "active", "1,2"] for n in ("per", "acct", "blk", "excl", "ok")],
    )
    imp(client, ["phone", "phone_status", "phone_list_ids"], [["+4912345678", "active", "1"]])
    call(client, "unsubscribe", contact_type="email", contact="per@x.io", list_ids="1")
    emu.unsubscribe("acct@x.io")  # account level: every list, even ones it is not in
    emu.block("blk@x.io")
    call(client, "exclude", contact_type="email", contact="excl@x.io", list_ids="1")
    imp(client, ["phone", "phone_status"], [["+4912345678", "unsubscribed"]])
    assert emu.is_opted_out("per@x.io", 1) and not emu.is_opted_out("PER@x.io ", 2)
    assert emu.is_opted_out("acct@x.io", 1) and emu.is_opted_out("acct@x.io", 99)
    assert emu.is_opted_out("blk@x.io", 2)
    assert not emu.is_opted_out("excl@x.io", 1)  # excluded silently: not an opt-out
    assert not emu.is_opted_out("ok@x.io", 1) and not emu.is_opted_out("ok@x.io", 99)
    assert emu.is_opted_out("+4912345678", 1)  # the phone channel's own status
    # the same answer syncd derives from an export of list 1
    names = ["email", "email_status", "email_unsubscribed_list_ids"]
    page = call(client, "exportContacts", list_id="1", **{"field_names[]": names})["result"]
    derived = {
        email: status in ("unsubscribed", "blocked") or "1" in unsub.split(",")
        for email, status, unsub in page["data"]
        if email
    }
    assert derived == {e: emu.is_opted_out(e, 1) for e in derived}
    assert derived == {"per@x.io": True, "acct@x.io": True, "blk@x.io": True, "ok@x.io": False}


def test_async_export_cycle_and_csv(client: httpx.Client, emu: UnisenderEmulator) -> None:
    imp(
        client,
        ["email", "Name", "tags", "email_list_ids"],
        [["a@x.io", 'Ann "A"', "vip,de", "1"], ["b@x.io", "Bob", "", "2"]],
    )
    names = ["email", "Name", "tags", "email_list_ids"]
    started = client.post(
        "/en/api/async/exportContacts",
        data={
            "api_key": KEY,
            "list_id": "1",
            **{f"field_names[{i}]": n for i, n in enumerate(names)},
        },
    ).json()["result"]
    assert started["status"] == "new" and len(started["task_uuid"]) == 36
    polls = [
        call(client, "async/getTaskResult", task_uuid=started["task_uuid"])["result"]
        for _ in range(2)
    ]
    assert [p["status"] for p in polls] == ["processing", "completed"]
    url = polls[1]["file_to_download"]
    assert url.startswith("http://emu/_files/")
    text = client.get(url).text
    assert list(csv.reader(io.StringIO(text))) == [names, ["a@x.io", 'Ann "A"', "vip,de", "1"]]
    emu.faults = Faults(export_truncate=True)
    assert not client.get(url).text.endswith("\n")


def test_an_export_file_cut_after_n_rows_is_whole_csv_with_no_error(
    client: httpx.Client, emu: UnisenderEmulator
) -> None:
    """``export_cut_rows``: the file ends at a row's line break, nothing malformed, no error."""
    imp(
        client,
        ["email", "Name", "email_list_ids"],
        [[f"u{i}@x.io", f'line one\nline "{i}"', "1"] for i in range(5)],  # cells span lines
    )
    names = {"field_names[0]": "email", "field_names[1]": "Name"}
    started = call(client, "async/exportContacts", list_id="1", **names)
    uuid_ = started["result"]["task_uuid"]
    polls = [call(client, "async/getTaskResult", task_uuid=uuid_) for _ in range(2)]
    url = polls[-1]["result"]["file_to_download"]
    whole = client.get(url).text
    emu.faults = Faults(export_cut_rows=3)
    cut = client.get(url)
    assert cut.status_code == 200 and cut.text.endswith("\r\n") and whole.startswith(cut.text)
    assert list(csv.reader(io.StringIO(cut.text), strict=True)) == [
        ["email", "Name"],
        *([f"u{i}@x.io", f'line one\nline "{i}"'] for i in range(3)),
    ]
    assert emu.faults.injected["export_cut_short"] == 1
    emu.faults = Faults(export_cut_rows=5)  # no row past the cut: the file is served whole
    assert client.get(url).text == whole and not emu.faults.injected


def test_paged_export_limits(client: httpx.Client) -> None:
    imp(client, ["email", "email_list_ids"], [[f"u{i}@x.io", "1"] for i in range(5)])
    first = call(
        client, "exportContacts", list_id="1", offset="0", limit="2", **{"field_names[]": "email"}
    )
    rest = call(
        client,
        "exportContacts",
        list_id="1",
        offset="2",
        limit="1000",
        **{"field_names[]": "email"},
    )
    assert [r[0] for r in first["result"]["data"] + rest["result"]["data"]] == [
        f"u{i}@x.io" for i in range(5)
    ]
    assert call(client, "exportContacts", limit="1001")["code"] == "invalid_arg"


# ---- envelope, auth, rate limits, faults (items 6-8) -----------------------------------------


def test_error_envelopes(client: httpx.Client) -> None:
    assert call(client, "noSuchMethod")["code"] == "unknown_method"
    bad_key = client.post("/en/api/getLists", data={"api_key": "wrong"}).json()
    assert bad_key == {"error": bad_key["error"], "code": "invalid_api_key", "result": ""}
    assert client.post("/en/api/getLists").json()["code"] == "invalid_api_key"
    assert client.get("/nothing").status_code == 404
    assert call(client, "createList", title="Newsletter")["code"] == "unspecified"
    assert call(client, "createField", name="1bad", type="string")["code"] == "invalid_arg"
    assert call(client, "createField", name="Age", type="blob")["code"] == "invalid_arg"
    assert call(client, "createField", name="Age", type="number")["result"]["id"] == 3
    fields = call(client, "getFields")["result"]
    assert fields[-1] == {"id": 3, "name": "Age", "type": "number", "is_visible": 1, "view_pos": 3}
    assert (
        call(client, "unsubscribe", contact_type="email", contact="x@x.io")["code"] == "unspecified"
    )


def test_rate_limits() -> None:
    emu = UnisenderEmulator(rate_limit_per_minute=3, export_rate_limit=1)
    with httpx.Client(transport=httpx.MockTransport(emu.handle), base_url="http://emu") as c:
        answers = [c.post("/en/api/getLists", data={"api_key": "any"}).json() for _ in range(4)]
        assert answers[2] == {"result": []}
        assert answers[3]["code"] == "api_call_limit_exceeded_for_api_key"
        emu2 = UnisenderEmulator(export_rate_limit=1)
        c2 = httpx.Client(transport=httpx.MockTransport(emu2.handle), base_url="http://emu")
        exports = [
            c2.post("/en/api/async/exportContacts", data={"api_key": "k"}).json() for _ in "ab"
        ]
        assert exports[0]["result"]["status"] == "new"
        assert exports[1]["code"] == "api_call_limit_exceeded_for_api_key"


def test_fault_injection_is_scoped_and_counted(
    client: httpx.Client, emu: UnisenderEmulator
) -> None:
    emu.faults = Faults(error_code_rate=1.0, retry_after="30", methods={"importContacts"})
    r = client.post("/en/api/importContacts", data=rows(["email"], [["a@x.io"]], api_key=KEY))
    assert r.json()["code"] == "retry_later" and r.headers["Retry-After"] == "30"
    assert call(client, "getLists")["result"]
    emu.faults = Faults(http_5xx_rate=1.0)
    assert client.post("/en/api/getLists", data={"api_key": KEY}).status_code == 503
    emu.faults = Faults(export_never_completes=True)
    task = call(client, "async/exportContacts")["result"]["task_uuid"]
    assert call(client, "async/getTaskResult", task_uuid=task)["result"]["status"] == "processing"
    assert emu.calls["importContacts"] == 1 and emu.write_calls == 1
    seq = [Faults(seed=7, drop_rate=0.5).roll(0.5) for _ in range(3)]
    assert len(set(seq)) == 1  # same seed, same first roll


def test_row_faults_refuse_rows_or_the_whole_import_and_are_counted(
    client: httpx.Client, emu: UnisenderEmulator
) -> None:
    emails = [[f"p{i}@example.com"] for i in range(40)]
    emu.faults = Faults(row_reject_rate=0.5, seed=3)
    result = imp(client, ["email"], emails)
    refused = {entry["index"] for entry in result["log"]}
    assert 0 < len(refused) < 40 and {e["code"] for e in result["log"]} == {"retry_later"}
    assert result["inserted"] == 40 - len(refused)  # the counters add up (§1.4)
    assert {i for i, (e,) in enumerate(emails) if emu.get(e) is None} == refused
    assert emu.faults.injected == {"row_rejected retry_later": len(refused)}

    emu.faults = Faults(refuse_rate=0.1, seed=3)
    picked = [e for (e,) in emails if emu.faults.refuses(e)]
    assert picked and all(Faults(refuse_rate=0.1, seed=3).refuses(e) for e in picked)
    answer = call(client, "importContacts", **rows(["email"], [[picked[0]], ["new@example.com"]]))
    assert answer["code"] == "unspecified" and picked[0] in answer["error"]
    assert emu.get("new@example.com") is None  # nothing of a refused call applies
    fine = [[e] for (e,) in emails if e not in picked]
    assert imp(client, ["email"], fine)["log"] == []
    assert emu.faults.injected == {"import_refused": 1}


def test_the_export_download_gets_http_faults_but_no_error_envelope(
    client: httpx.Client, emu: UnisenderEmulator
) -> None:
    task = call(client, "async/exportContacts")["result"]["task_uuid"]
    for _ in range(2):
        url = call(client, "async/getTaskResult", task_uuid=task)["result"].get("file_to_download")
    assert url
    emu.faults = Faults(http_5xx_rate=1.0, error_code_rate=1.0, methods={"download"})
    assert call(client, "getLists")["result"]  # only the download is hit
    assert client.get(url).status_code == 503
    emu.faults = Faults(error_code_rate=1.0, methods={"download"})
    assert client.get(url).text.startswith("id,email")  # a file has no error envelope
    assert emu.faults.injected == {}


def test_injected_faults_are_counted_by_kind_over_admin(
    client: httpx.Client, emu: UnisenderEmulator
) -> None:
    body = {"error_code_rate": 1.0, "retry_after": "2", "methods": ["getLists"], "seed": 1}
    assert client.post("/_emulator/faults", json=body).status_code == 200
    for _ in range(3):
        assert client.post("/en/api/getLists", data={"api_key": KEY}).json()["code"]
    call(client, "getFields")
    state = client.get("/_emulator/faults").json()
    assert state["injected"] == {"retry_later +Retry-After": 3} and state["retry_after"] == "2"
    # what GET answers may be posted back as it is: the counts start again
    assert client.post("/_emulator/faults", json=state).status_code == 200
    assert client.get("/_emulator/faults").json()["injected"] == {}


def test_admin_endpoints(client: httpx.Client, emu: UnisenderEmulator) -> None:
    def admin(path: str, body: dict[str, Any] | None = None) -> Any:
        r = (
            client.post(f"/_emulator/{path}", json=body or {})
            if body is not None
            else client.get(f"/_emulator/{path}")
        )
        assert r.status_code == 200, r.text
        return r.json()

    assert admin("list", {"title": "Third"}) == {"id": 3}
    assert admin("field", {"name": "Zip"}) == {"id": 3}
    admin("contact", {"action": "sign_up", "email": "a@x.io", "list_id": 1, "fields": {"Zip": "1"}})
    admin("contact", {"action": "set_tags", "email": "a@x.io", "tags": ["x"]})
    admin("contact", {"action": "edit", "email": "a@x.io", "fields": {"City": "Rome"}})
    admin("contact", {"action": "unsubscribe", "email": "a@x.io", "list_id": 1})
    state = admin("state?list_id=1")
    (row,) = state["contacts"]
    assert row["fields"] == {"Zip": "1", "City": "Rome"} and row["tags"] == ["x"]
    assert row["unsubscribed"] == [1] and row["email_status"] == "active"
    admin("contact", {"action": "block", "email": "a@x.io"})
    assert contact(emu, "a@x.io")["email_status"] == "blocked"
    admin("contact", {"action": "delete", "email": "a@x.io"})
    assert admin("state")["contacts"] == []
    assert admin("faults", {"latency": 0.0, "methods": ["getLists"]})["methods"] == ["getLists"]
    call(client, "getLists")
    assert admin("calls") == {"calls": {"getLists": 1}, "write_calls": 0}
    admin("reset-calls", {})
    assert admin("calls")["calls"] == {}
    assert (
        client.post("/_emulator/contact", json={"action": "edit", "email": "no@x.io"}).status_code
        == 404
    )


# ---- over real loopback HTTP -----------------------------------------------------------------


def test_server_roundtrip_and_download(emu: UnisenderEmulator) -> None:
    emu.export_polls = 1
    emu.sign_up("a@x.io", 1, fields={"Name": "Ann"})
    with EmulatorServer(emu.handle) as server, httpx.Client(base_url=server.url) as c:
        assert server.url.startswith("http://127.0.0.1:")
        task = c.post("/en/api/async/exportContacts", data={"api_key": KEY, "list_id": "1"}).json()
        done = c.post(
            "/en/api/async/getTaskResult",
            data={"api_key": KEY, "task_uuid": task["result"]["task_uuid"]},
        ).json()["result"]
        assert done["file_to_download"].startswith(server.url + "/_files/")
        header, row = csv.reader(io.StringIO(c.get(done["file_to_download"]).text))
        assert dict(zip(header, row, strict=True))["Name"] == "Ann"


def test_server_drops_connection(emu: UnisenderEmulator) -> None:
    emu.faults = Faults(drop_rate=1.0, seed=1)
    with (
        EmulatorServer(emu.handle) as server,
        httpx.Client(base_url=server.url) as c,
        pytest.raises(httpx.RemoteProtocolError),
    ):
        c.post("/en/api/getLists", data={"api_key": KEY})
    with (
        httpx.Client(transport=httpx.MockTransport(emu.handle), base_url="http://emu") as c,
        pytest.raises(httpx.TransportError),  # the same failure class in-process
    ):
        c.post("/en/api/getLists", data={"api_key": KEY})


def test_server_timeout(emu: UnisenderEmulator) -> None:
    emu.faults = Faults(timeout_rate=1.0, hang_seconds=1.0, methods={"importContacts"})
    with EmulatorServer(emu.handle) as server, httpx.Client(base_url=server.url, timeout=0.2) as c:
        with pytest.raises(httpx.ReadTimeout):
            c.post("/en/api/importContacts", data=rows(["email"], [["a@x.io"]], api_key=KEY))
        assert c.post("/en/api/getLists", data={"api_key": KEY}).json()["result"][0]["id"] == 1


def test_a_served_emulator_process_stops_on_sigterm(tmp_path: Path) -> None:
    code = (
        "from syncd.emulators.kit import EmulatorOptions, serve;"
        "from syncd.emulators.unisender import make_emulator;"
        "serve(make_emulator(EmulatorOptions('selzy', None, seed=True)), '127.0.0.1', 0, None)"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parents[2],
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line.startswith("emulator listening on http://127.0.0.1:")
        url = line.rsplit(" ", 1)[1]
        lists = httpx.post(f"{url}/en/api/getLists", data={"api_key": "any"}).json()
        assert lists == {"result": [{"id": 1, "title": "Newsletter"}]}
        state = httpx.get(f"{url}/_emulator/state").json()
        assert [f["name"] for f in state["fields"]] == ["Name", "City"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_keep_alive_answers_do_not_wait_for_a_delayed_ack() -> None:
    """The server writes headers and body separately; with Nagle's algorithm on, each answer
    on a kept-alive connection stalled ~40 ms for the client's delayed ACK."""
    with (
        EmulatorServer(lambda request: httpx.Response(200, json={"ok": True})) as server,
        httpx.Client(base_url=server.url) as client,
    ):
        took = []
        for _ in range(15):
            started = time.perf_counter()
            assert client.post("/x", json={"a": 1}).status_code == 200
            took.append(time.perf_counter() - started)
    assert statistics.median(took) < 0.02
