"""The Unisender emulator where the documents say more than a quick fake would do: the async
export's ``processing`` phase and its ``notify_url`` callback, what an import refuses and how it
counts it, and a request no web server would pass on."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from syncd.emulators.kit.server import EmulatorServer
from syncd.emulators.unisender import UnisenderEmulator
from syncd.emulators.unisender_import import LOG_CODES

KEY = "fidelity-key"


@pytest.fixture
def emu() -> UnisenderEmulator:
    emulator = UnisenderEmulator(api_key=KEY)
    emulator.add_list("Newsletter")
    emulator.add_field("Name")
    return emulator


@pytest.fixture
def client(emu: UnisenderEmulator) -> Iterator[httpx.Client]:
    with httpx.Client(transport=httpx.MockTransport(emu.handle), base_url="http://emu") as c:
        yield c


def call(client: httpx.Client, method: str, **params: Any) -> dict[str, Any]:
    body: dict[str, Any] = client.post(
        f"/en/api/{method}", data={"api_key": KEY, "format": "json", **params}
    ).json()
    return body


def test_an_export_task_is_processing_before_it_completes(client: httpx.Client) -> None:
    started = call(client, "async/exportContacts", list_id="1")["result"]
    assert started["status"] == "new"  # §1.5 step 1
    polls = [
        call(client, "async/getTaskResult", task_uuid=started["task_uuid"])["result"]
        for _ in range(2)
    ]
    assert [p["status"] for p in polls] == ["processing", "completed"]  # §1.5 step 2
    assert "file_to_download" not in polls[0] and polls[1]["file_to_download"]


def test_an_export_task_posts_its_result_to_notify_url(emu: UnisenderEmulator) -> None:
    got: list[dict[str, Any]] = []
    arrived = threading.Event()

    def receiver(request: httpx.Request) -> httpx.Response:
        got.append(json.loads(request.content))
        arrived.set()
        return httpx.Response(200)

    with (
        EmulatorServer(emu.handle) as api,
        EmulatorServer(receiver) as app,
        httpx.Client(base_url=api.url) as c,
    ):
        started = call(c, "async/exportContacts", list_id="1", notify_url=f"{app.url}/ready")
        assert arrived.wait(5), "notify_url was never called"
        (body,) = got
        assert body["result"]["task_uuid"] == started["result"]["task_uuid"]
        assert body["result"]["status"] == "completed"  # §1.5 step 3: getTaskResult's shape
        # ready by time: the first poll after the callback finds it completed
        first = call(c, "async/getTaskResult", task_uuid=body["result"]["task_uuid"])
        assert first["result"]["status"] == "completed"
        download = c.get(body["result"]["file_to_download"])
        assert download.status_code == 200 and "email" in download.text.splitlines()[0]


def test_a_row_refused_for_an_eleventh_tag_counts_as_not_imported(client: httpx.Client) -> None:
    tags = ",".join(f"t{i}" for i in range(11))
    result = call(
        client,
        "importContacts",
        **{"field_names[0]": "email", "field_names[1]": "tags"},
        **{"data[0][0]": "ann@example.com", "data[0][1]": tags},
        **{"data[1][0]": "bob@example.com", "data[1][1]": "a"},
    )["result"]
    assert result["log"] == [
        {"index": 0, "code": LOG_CODES["too_many_tags"], "message": "Too many tags (max 10)"}
    ]
    # every row is in exactly one counter: §1.4 `invalid` is "emails not imported"
    assert (result["total"], result["inserted"], result["invalid"]) == (2, 1, 1)


@pytest.mark.parametrize(
    "address", ["ann@example..com", "ann.@example.com", ".ann@example.com", "ann@.example.com"]
)
def test_an_address_that_is_not_a_dot_atom_is_refused(client: httpx.Client, address: str) -> None:
    result = call(client, "importContacts", **{"field_names[0]": "email", "data[0][0]": address})[
        "result"
    ]
    assert (result["inserted"], result["invalid"]) == (0, 1)
    assert result["log"][0]["code"] == LOG_CODES["email_invalid"]


def test_an_import_too_long_for_a_get_request_line_is_refused(client: httpx.Client) -> None:
    params = {"api_key": KEY, "field_names[0]": "email", "field_names[1]": "Name"}
    for i in range(500):
        params |= {f"data[{i}][0]": f"person{i}@example.com", f"data[{i}][1]": f"Person {i}"}
    refused = client.get("/en/api/importContacts", params=params)
    assert refused.status_code == 414
    # the same call as a POST (what the docs recommend) is applied
    posted = client.post("/en/api/importContacts", data=params).json()["result"]
    assert posted["inserted"] == 500
