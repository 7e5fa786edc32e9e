"""deploy/docker/example_app.py checks webhook signatures as the ``standardwebhooks`` library
does: what the library signs it accepts, what it tampers with it refuses, and it takes syncd's
own deliveries."""

from __future__ import annotations

import base64
import importlib.util
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from sqlmodel import Session
from standardwebhooks.webhooks import Webhook

from syncd.config import WebhookConfig
from syncd.core.projection import Projection, RemoteChange
from syncd.local import webhook_queue
from syncd.local.change_event import ChangeEvent
from syncd.local.webhook_send import Sender
from syncd.store import open_engine

APP = Path(__file__).resolve().parents[2] / "deploy" / "docker" / "example_app.py"
SECRET = "whsec_" + base64.b64encode(b"e" * 32).decode()
OTHER = "whsec_" + base64.b64encode(b"f" * 32).decode()


@pytest.fixture(scope="module")
def app() -> ModuleType:
    spec = importlib.util.spec_from_file_location("example_app", APP)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def signed(secret: str, body: str, msg_id: str = "evt1", at: float | None = None) -> dict[str, Any]:
    stamp = datetime.fromtimestamp(time.time() if at is None else at, tz=UTC)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(stamp.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id, stamp, body),
    }


def test_the_app_accepts_what_the_library_signs_and_refuses_the_rest(app: ModuleType) -> None:
    body = json.dumps({"id": "evt1", "kind": "unsubscribe", "key": "ann@example.com"})
    headers = signed(SECRET, body)
    assert app.verify(SECRET, headers, body.encode())["key"] == "ann@example.com"
    # a rotation: two signatures, either secret is enough
    both = {
        **headers,
        "webhook-signature": signed(OTHER, body)["webhook-signature"]
        + " "
        + headers["webhook-signature"],
    }
    assert app.verify(SECRET, both, body.encode())["kind"] == "unsubscribe"
    refusals = [
        (SECRET, headers, body.replace("ann", "bob")),  # the body changed
        (OTHER, headers, body),  # another secret
        (SECRET, {**headers, "webhook-id": "evt2"}, body),  # another id
        (SECRET, signed(SECRET, body, at=time.time() - 3600), body),  # replayed an hour later
        (SECRET, {k: v for k, v in headers.items() if k != "webhook-signature"}, body),
        (SECRET, {**headers, "webhook-signature": "v2," + headers["webhook-signature"][3:]}, body),
    ]
    for secret, h, b in refusals:
        with pytest.raises(app.BadSignature):
            app.verify(secret, h, b.encode())


def test_the_app_takes_syncds_deliveries_over_http(app: ModuleType, tmp_path: Path) -> None:
    app.WEBHOOK_SECRET = SECRET
    server = app.serve_webhooks("127.0.0.1:0")
    url = f"http://127.0.0.1:{server.server_address[1]}/hooks/syncd"
    engine = open_engine(f"sqlite:///{tmp_path / 'syncd.db'}")
    try:
        for secret, expected in ((SECRET, {"delivered": 1}), (OTHER, {"retried": 1})):
            hook = WebhookConfig(name="app", url=url, secret=secret)  # type: ignore[arg-type]
            after = Projection.build("ann@example.com", {}, (), "unsubscribed")
            change = RemoteChange("news", "ann@example.com", "pull", None, after)
            with Session(engine) as session:
                event = ChangeEvent.from_remote_change(change, "unisender", "c1")
                webhook_queue.enqueue(session, event, [hook])
                session.commit()
            sender = Sender(engine, "p1")
            try:
                assert sender.deliver_due([hook]) == expected  # a wrong secret is refused: 401
            finally:
                sender.close()
    finally:
        server.shutdown()
        engine.dispose()
