"""Webhooks the rollout calls and waits for: start a load test before the rollout, check
something before each step, ask another system to confirm a promotion, report the end.

Unlike notifications these are synchronous and their answer matters, so `call_hook` makes one
bounded POST and says plainly how it went; the caller decides what a failure means
(pre-rollout failing stops the rollout, confirm-promotion not answering 2xx means hold). The
plan names where each URL and key is kept, never the value, as for notification channels.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from canarykit.core.durations import parse_duration
from canarykit.core.errors import BadInput
from canarykit.notify.channels import (
    DELIVERY_HEADER,
    EVENT_HEADER,
    SIGNATURE_HEADER,
    check_http_url,
    check_keys,
    name_entries,
    parse_name,
    parse_reference,
    read_reference,
    sign,
    transport_problem,
    url_host,
)

HOOK_KINDS = ("pre-rollout", "pre-step", "confirm-promotion", "post-rollout")
HOOK_KEYS = ("kind", "url_env", "url_file", "secret_env", "secret_file", "timeout", "metadata",
             "name")
DEFAULT_TIMEOUT = "10s"


@dataclass
class Hook:
    """One webhook of the plan: when it is called, where its URL (and key) are kept."""

    kind: str
    url_env: str = ""
    url_file: str = ""
    secret_env: str = ""  # optional: sign the body with this HMAC-SHA256 key
    secret_file: str = ""
    timeout: str = DEFAULT_TIMEOUT  # a Go duration bounding the whole call
    metadata: dict[str, str] = field(default_factory=dict)  # sent as is in the body
    name: str = ""
    where: str = field(default="", repr=False, compare=False)  # its field path in the plan

    @property
    def timeout_seconds(self) -> float:
        return parse_duration(self.timeout, f"{self.where or self.name}.timeout")

    def to_dict(self) -> dict[str, Any]:
        """As written in a plan (parse_hooks reads it back to an equal Hook)."""
        out: dict[str, Any] = {"kind": self.kind}
        for key in ("url_env", "url_file", "secret_env", "secret_file"):
            if getattr(self, key):
                out[key] = getattr(self, key)
        out.update(timeout=self.timeout, metadata=dict(self.metadata), name=self.name)
        return out


def parse_hooks(raw: Any, path: str = "webhooks") -> list[Hook]:
    """The hooks of a plan's `webhooks` (None: none); BadInput names the field."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise BadInput(path, type(raw).__name__, "must be a list of webhooks")
    hooks = [_hook(f"{path}[{index}]", item) for index, item in enumerate(raw)]
    name_entries(hooks)
    return hooks


def _hook(where: str, item: Any) -> Hook:
    if not isinstance(item, dict):
        raise BadInput(where, type(item).__name__,
                       f"must be a mapping with a kind ({', '.join(HOOK_KINDS)}) and url_env "
                       "or url_file")
    check_keys(where, item, HOOK_KEYS, "webhook")
    kind = item.get("kind")
    if kind not in HOOK_KINDS:
        raise BadInput(f"{where}.kind", kind, f"must be one of {', '.join(HOOK_KINDS)}")
    url_env, url_file = parse_reference(where, item, "url", required=True)
    secret_env, secret_file = parse_reference(where, item, "secret", required=False)
    timeout = item.get("timeout", DEFAULT_TIMEOUT)
    if not isinstance(timeout, str):
        raise BadInput(f"{where}.timeout", timeout, "must be a duration such as 10s or 1m")
    if parse_duration(timeout, f"{where}.timeout") <= 0:
        raise BadInput(f"{where}.timeout", timeout, "must be above 0")
    metadata = item.get("metadata", {})
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict):
        raise BadInput(f"{where}.metadata", metadata, "must be a mapping of strings")
    for key, value in metadata.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise BadInput(f"{where}.metadata.{key}", value,
                           "must be a string (quote numbers and booleans)")
    return Hook(kind=kind, url_env=url_env, url_file=url_file, secret_env=secret_env,
                secret_file=secret_file, timeout=timeout, metadata=dict(metadata),
                name=parse_name(where, item), where=where)


@dataclass
class HookResult:
    """How one call went: `reason` is one line and never holds the URL or the key."""

    hook: str  # the hook's name
    kind: str
    ok: bool  # answered 2xx
    status: int | None  # None when there was no answer
    reason: str
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {"hook": self.hook, "kind": self.kind, "ok": self.ok, "status": self.status,
                "reason": self.reason, "seconds": self.seconds}


def check_hooks(hooks: list[Hook]) -> list[str]:
    """Read every hook's URL and key now, so a missing one is a BadInput before the rollout
    starts rather than when the hook is due; returns how each may be shown."""
    return [describe(hook, _url_and_secret(hook)[0]) for hook in hooks]


def describe(hook: Hook, url: str) -> str:
    return f"{hook.name} ({hook.kind}, {url_host(url)})"


def _url_and_secret(hook: Hook) -> tuple[str, str]:
    where = hook.where or f"webhooks[{hook.name}]"
    url = read_reference(where, "url", hook.url_env, hook.url_file)
    check_http_url(where, hook.url_env, hook.url_file, url)
    secret = ""
    if hook.secret_env or hook.secret_file:
        secret = read_reference(where, "secret", hook.secret_env, hook.secret_file)
    return url, secret


def hook_body(hook: Hook, payload: dict[str, Any]) -> bytes:
    """The exact body bytes: the hook's kind, name and metadata, then `payload` (which cannot
    replace those three)."""
    body = {**payload, "kind": hook.kind, "name": hook.name, "metadata": dict(hook.metadata)}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      default=str).encode()


def call_hook(hook: Hook, payload: dict[str, Any]) -> HookResult:
    """POST once (no retries: the caller decides what a failure means), bounded by the hook's
    timeout; ok only on a 2xx answer. BadInput, before anything is sent, when the URL or key
    cannot be read."""
    import requests

    url, secret = _url_and_secret(hook)
    seconds = hook.timeout_seconds
    body = hook_body(hook, payload)
    headers = {"Content-Type": "application/json", EVENT_HEADER: hook.kind}
    if payload.get("key"):
        headers[DELIVERY_HEADER] = str(payload["key"])
    if secret:
        headers[SIGNATURE_HEADER] = sign(secret, body)
    started = time.monotonic()
    status: int | None = None
    try:
        response = requests.post(url, data=body, headers=headers, timeout=seconds,
                                 allow_redirects=False)
    except requests.RequestException as exc:
        reason = transport_problem(exc, hook.timeout)
    else:
        status = response.status_code
        response.close()
        reason = f"answered {status}"
    for piece in (url, secret):  # the reasons are fixed phrases; this is the second lock
        if piece:
            reason = reason.replace(piece, "***")
    return HookResult(hook=hook.name, kind=hook.kind, ok=status is not None and 200 <= status < 300,
                      status=status, reason=reason,
                      seconds=round(time.monotonic() - started, 3))
