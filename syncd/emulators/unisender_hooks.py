"""Unisender/Selzy event notifications: ``setHook``, ``listHooks``, ``removeHook``, and the events
the emulator POSTs when a contact changes through its admin routes.

Sources: ``/work/shared/providers/unisender-selzy.md``, "Event notifications (webhooks)".
- [CONFIRMED] ``setHook(hook_url, events[], event_format, max_parallel, single_event, status)``;
  ``hook_url`` identifies the handler (a second ``setHook`` with it replaces it). JSON is POSTed;
  the handler answers 200 within 3 s, else the call is retried every 10 minutes for 24 hours
  with a ``retry_count`` that grows by one, and then the hook is ``stopped`` until ``setHook``
  sets ``status=active`` again. Events cover a contact unsubscribing from a list or subscribing
  to another, and data changes.
- [UNCONFIRMED, from the sister transactional API] the envelope ``{"auth", "events_by_user":
  [{"user_id", "events": [{"event_name", "event_data"}]}]}`` with ``auth`` the MD5 hex digest of
  the body whose ``auth`` holds the API key.
- [ASSUMED] the event names (``EVENT_NAMES``, settable per emulator), one event per POST, the
  ``retry_count`` as a query parameter, the answers of ``listHooks``/``removeHook``.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from typing import Any

from syncd.emulators.kit import forms as pp
from syncd.emulators.kit.hooks import Delivery, HookPolicy, HookSender
from syncd.emulators.unisender_account import ApiError

# what the emulator calls each change [ASSUMED]: an action of the admin routes -> event name
EVENT_NAMES: dict[str, str] = {
    "list_unsubscribe": "unsubscribe",  # a contact unsubscribed from one list
    "subscribe": "subscribe",  # a contact subscribed to a list
    "status": "email_status",  # the address as a whole: unsubscribed or blocked
    "update": "contact_update",  # fields, tags or the address changed
    "delete": "contact_delete",
}
USER_ID = 1  # the account's user id in ``events_by_user`` [ASSUMED]


@dataclass
class Hook:
    url: str
    events: list[str]
    event_format: str = "json_post"
    max_parallel: int = 10
    single_event: bool = True
    status: str = "active"  # active | stopped | disabled
    kept_back: list[dict[str, Any]] = field(default_factory=list)  # events while stopped

    def to_json(self) -> dict[str, Any]:
        return {
            "hook_url": self.url,
            "events": list(self.events),
            "event_format": self.event_format,
            "max_parallel": self.max_parallel,
            "single_event": int(self.single_event),
            "status": self.status,
        }


class Hooks:
    """The account's event handlers and their deliveries."""

    def __init__(self, api_key: str | None, policy: HookPolicy | None = None) -> None:
        self.api_key = api_key or ""
        self.names = dict(EVENT_NAMES)
        self._lock = threading.Lock()
        self.by_url: dict[str, Hook] = {}
        self.sender = HookSender(
            policy or HookPolicy(timeout=3.0, retry_interval=600.0, give_up_after=86_400.0),
            on_stopped=self._stopped,
            query=_retry_count,
            sign=self.signed,
        )

    # ---- the API methods

    def set_hook(self, p: pp.Params) -> dict[str, Any]:
        url = pp.scalar(p, "hook_url").strip()
        if not url.startswith(("http://", "https://")):
            raise ApiError("invalid_arg", "hook_url must be an http(s) URL")
        events = [v for _, v in pp.indexed(p.get("events")) if isinstance(v, str) and v]
        if not events:
            raise ApiError("invalid_arg", "events is required")
        status = pp.scalar(p, "status").strip() or "active"
        if status not in ("active", "disabled"):
            raise ApiError("invalid_arg", f"unknown status {status!r}")
        with self._lock:
            hook = Hook(
                url,
                events,
                event_format=pp.scalar(p, "event_format") or "json_post",
                max_parallel=int(pp.scalar(p, "max_parallel") or 10),
                single_event=pp.scalar(p, "single_event") not in ("0", "false"),
                status=status,
            )
            kept = self.by_url.get(url)
            self.by_url[url] = hook  # the same URL replaces the handler
            resend = kept.kept_back if kept is not None and status == "active" else []
        for body in resend:  # re-activated: what waited while it was stopped goes now
            self.sender.send(url, body)
        return hook.to_json()

    def list_hooks(self) -> list[dict[str, Any]]:
        with self._lock:
            return [h.to_json() for h in self.by_url.values()]

    def remove_hook(self, p: pp.Params) -> dict[str, Any]:
        url = pp.scalar(p, "hook_url").strip()
        with self._lock:
            if self.by_url.pop(url, None) is None:
                raise ApiError("unspecified", f'Hook "{url}" not found')
        return {}

    # ---- events

    def emit(self, action: str, data: dict[str, Any]) -> None:
        """A contact changed through an admin route: notify the handlers that asked for it."""
        name = self.names[action]
        body = {
            "auth": "",
            "events_by_user": [
                {"user_id": USER_ID, "events": [{"event_name": name, "event_data": data}]}
            ],
        }
        send: list[str] = []
        with self._lock:
            for hook in self.by_url.values():
                if name not in hook.events or hook.status == "disabled":
                    continue
                if hook.status == "stopped":
                    hook.kept_back.append(body)
                else:
                    send.append(hook.url)
        for url in send:
            self.sender.send(url, body)

    def signed(self, body: dict[str, Any]) -> bytes:
        """The body as sent: ``auth`` is the MD5 of the compact JSON with the key in its place."""
        template = json.dumps({**body, "auth": self.api_key}, separators=(",", ":"))
        digest = hashlib.md5(template.encode(), usedforsecurity=False).hexdigest()
        return json.dumps({**body, "auth": digest}, separators=(",", ":")).encode()

    def _stopped(self, url: str) -> None:
        with self._lock:
            hook = self.by_url.get(url)
            if hook is not None:
                hook.status = "stopped"


def _retry_count(delivery: Delivery) -> dict[str, str]:
    return {"retry_count": str(delivery.attempts)} if delivery.attempts else {}
