"""Notifications: tell people in Slack, Teams, a signed webhook or any apprise service what a
rollout is doing, without ever slowing the rollout down or saying the same thing twice.

A chat webhook URL is a credential (whoever holds it can post), so the plan names where each
URL and key is kept (an environment variable or a file), never the value, and no message, log
line or record carries one: a channel is shown by its name, kind and at most its host.
`Channel` is one entry of the plan's `notifications`, `Event` what happened, `deliver` posts one
event to one channel with bounded retries, and `Notifier` does that on a background thread,
keeping a delivery log in the release folder so a resumed step never announces anything twice.
"""

from __future__ import annotations

import contextvars
import fcntl
import hashlib
import hmac
import json
import logging
import os
import queue
import re
import threading
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from canarykit.core import names, times
from canarykit.core.errors import BadInput

EVENTS = ("started", "step", "held", "waiting", "approved", "promoted", "rolled-back", "error",
          "test")
ALWAYS = "test"  # `canarykit notify test` reaches every channel, whatever its `events` say
CHANNEL_KINDS = ("slack", "teams", "webhook", "apprise")
CHANNEL_KEYS = ("kind", "url_env", "url_file", "secret_env", "secret_file", "events", "name")
# Teams renders cards posted by Workflows ("Post card in a chat or channel") up to 1.4; a 1.5
# card shows "this card couldn't be displayed" there (microsoft/AdaptiveCards#8965).
ADAPTIVE_CARD_VERSION = "1.4"
ADAPTIVE_CARD_SCHEMA = "http://adaptivecards.io/schemas/adaptive-card.json"
REASON_LIMIT = 300  # characters of a reason in a message: one line, not a traceback
MAX_RETRY_AFTER = 10.0  # seconds: the most a 429's Retry-After makes a retry wait
HIDDEN = "<not shown>"  # stands for a value in an error that may be a secret
SIGNATURE_HEADER = "X-Canarykit-Signature"
EVENT_HEADER = "X-Canarykit-Event"
DELIVERY_HEADER = "X-Canarykit-Delivery"
HEADLINES = {
    "started": "rollout started",
    "step": "step judged",
    "held": "holding: INCONCLUSIVE",
    "waiting": "waiting for approval",
    "approved": "approved",
    "promoted": "promoted",
    "rolled-back": "rolled back",
    "error": "error",
    "test": "test notification",
}


# ---------------------------------------------------------------- the plan's entries


@dataclass
class Channel:
    """One notification channel of the plan: where its URL (and key) are kept, never them."""

    kind: str
    url_env: str = ""  # NAME of the environment variable holding the URL
    url_file: str = ""  # or the path of a file holding it
    secret_env: str = ""  # webhook only: the HMAC-SHA256 key's variable ...
    secret_file: str = ""  # ... or file
    events: list[str] = field(default_factory=lambda: list(EVENTS))
    name: str = ""  # shown in logs and reports instead of the URL
    where: str = field(default="", repr=False, compare=False)  # its field path in the plan

    def to_dict(self) -> dict[str, Any]:
        """As written in a plan (parse_channels reads it back to an equal Channel)."""
        out: dict[str, Any] = {"kind": self.kind}
        for key in ("url_env", "url_file", "secret_env", "secret_file"):
            if getattr(self, key):
                out[key] = getattr(self, key)
        out["events"] = list(self.events)
        out["name"] = self.name
        return out

    def wants(self, event_kind: str) -> bool:
        """Whether this channel is told about events of `event_kind`."""
        return event_kind == ALWAYS or event_kind in self.events


def parse_channels(raw: Any, path: str = "notifications") -> list[Channel]:
    """The channels of a plan's `notifications` (None: none); BadInput names the field."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise BadInput(path, type(raw).__name__, "must be a list of channels")
    channels = [_channel(f"{path}[{index}]", item) for index, item in enumerate(raw)]
    name_entries(channels)
    return channels


def _channel(where: str, item: Any) -> Channel:
    if not isinstance(item, dict):
        raise BadInput(where, type(item).__name__,
                       f"must be a mapping with a kind ({', '.join(CHANNEL_KINDS)}) and url_env "
                       "or url_file")
    check_keys(where, item, CHANNEL_KEYS, "notification")
    kind = item.get("kind")
    if kind not in CHANNEL_KINDS:
        raise BadInput(f"{where}.kind", kind, f"must be one of {', '.join(CHANNEL_KINDS)}")
    url_env, url_file = parse_reference(where, item, "url", required=True)
    secret_env, secret_file = parse_reference(where, item, "secret", required=kind == "webhook")
    if kind != "webhook" and (secret_env or secret_file):
        key = "secret_env" if secret_env else "secret_file"
        raise BadInput(f"{where}.{key}", item[key],
                       "applies to webhook channels only (they sign their body with it)")
    channel = Channel(kind=kind, url_env=url_env, url_file=url_file, secret_env=secret_env,
                      secret_file=secret_file, name=parse_name(where, item), where=where)
    if "events" in item:
        channel.events = _events(f"{where}.events", item["events"])
    return channel


def _events(where: str, raw: Any) -> list[str]:
    if not isinstance(raw, list) or not raw:
        raise BadInput(where, raw, f"must be a list of at least one of {', '.join(EVENTS)}")
    for index, kind in enumerate(raw):
        if kind not in EVENTS:
            raise BadInput(f"{where}[{index}]", kind, f"must be one of {', '.join(EVENTS)}")
    return list(dict.fromkeys(raw))


def check_keys(where: str, item: dict[str, Any], known: Iterable[str], what: str) -> None:
    """Refuse a key that is not a setting; its value is not shown (it may be a URL)."""
    for key in item:
        if key not in known:
            hint = (" (the plan holds no URL or key: put it in an environment variable and "
                    "name that with url_env, or in a file named with url_file)"
                    if key in ("url", "secret", "webhook", "webhook_url") else "")
            raise BadInput(f"{where}.{key}", HIDDEN,
                           f"is not a {what} setting (known: {', '.join(known)}){hint}")


def parse_reference(where: str, item: dict[str, Any], stem: str, *,
                    required: bool) -> tuple[str, str]:
    """(`STEM_env`, `STEM_file`) of an entry: at most one (exactly one when `required`)."""
    env, file = item.get(f"{stem}_env", ""), item.get(f"{stem}_file", "")
    for key, value in ((f"{stem}_env", env), (f"{stem}_file", file)):
        if not isinstance(value, str) or (key in item and not value):
            raise BadInput(f"{where}.{key}", value, "must be a non-empty string")
    if env and file:
        raise BadInput(f"{where}.{stem}_file", file, f"give either {stem}_env or {stem}_file")
    if required and not (env or file):
        raise BadInput(f"{where}.{stem}_env", None,
                       f"is required (or {stem}_file): the environment variable holding the "
                       f"{'URL' if stem == 'url' else 'key'}, never the value itself")
    if env and not names.is_env_name(env):
        raise BadInput(f"{where}.{stem}_env", env,
                       "must be an environment variable name (letters, digits and '_')")
    return env, file


def parse_name(where: str, item: dict[str, Any]) -> str:
    """An entry's optional `name`: label characters, as it appears in logs and file names."""
    name = item.get("name", "")
    if "name" in item and not names.is_label_value(name):
        raise BadInput(f"{where}.name", name, "must be letters, digits, '-', '_' and '.', "
                       "starting and ending with a letter or digit, at most 63 characters")
    return name


def name_entries(entries: list[Any]) -> None:
    """Give each unnamed entry its kind as name (kind-2, kind-3, ... when taken); refuse a
    name used twice, since the delivery log tells entries apart by name."""
    taken: set[str] = set()
    for entry in entries:
        if entry.name:
            if entry.name in taken:
                raise BadInput(f"{entry.where}.name", entry.name, "is used by another entry")
            taken.add(entry.name)
    for entry in entries:
        if not entry.name:
            number, name = 1, entry.kind
            while name in taken:
                number += 1
                name = f"{entry.kind}-{number}"
            entry.name = name
            taken.add(name)


# ---------------------------------------------------------------- secrets, read when used


def read_reference(where: str, stem: str, env: str, file: str) -> str:
    """The value kept in environment variable `env` or file `file`; BadInput names the field
    and the variable or file, never the value."""
    if env:
        value = os.environ.get(env, "").strip()
        if not value:
            raise BadInput(f"{where}.{stem}_env", env,
                           "names an environment variable that is not set or empty")
        return value
    try:
        value = Path(file).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise BadInput(f"{where}.{stem}_file", file,
                       f"cannot be read ({exc.strerror or type(exc).__name__})") from None
    except UnicodeDecodeError:
        raise BadInput(f"{where}.{stem}_file", file, "is not UTF-8 text") from None
    if not value:
        raise BadInput(f"{where}.{stem}_file", file, "is empty")
    return value


def check_http_url(where: str, env: str, file: str, url: str) -> None:
    """Refuse a URL that is not http(s); the error names the variable or file, not the URL."""
    field_name, source = (f"{where}.url_env", env) if env else (f"{where}.url_file", file)
    try:
        parts = urlsplit(url)
        good = parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:
        good = False
    if not good or any(char.isspace() for char in url):
        raise BadInput(field_name, source, "must hold an http(s) URL")


def url_host(url: str) -> str:
    """What of an http(s) URL may be shown: its host and port, no user, path or query."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname or "", parts.port
    except ValueError:
        return "?"
    return f"{host}:{port}" if port else host


def sign(secret: str | bytes, body: bytes) -> str:
    """The signature header's value: `sha256=` and the HMAC-SHA256 of the exact body bytes."""
    key = secret.encode() if isinstance(secret, str) else secret
    return "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()


def verify_signature(secret: str | bytes, body: bytes, header: str) -> bool:
    """Whether `header` is the signature of `body` (what a receiver checks), in constant time."""
    return hmac.compare_digest(sign(secret, body), header or "")


def transport_problem(exc: BaseException, timeout_text: str) -> str:
    """One line saying why a request got no answer, without the URL the exception names."""
    from canarykit.core import requests_errors as failures

    return {failures.TLS: "the TLS handshake failed",
            failures.TIMEOUT: f"timed out after {timeout_text}",
            failures.REFUSED: "connection refused",
            failures.UNRESOLVED: "host name could not be resolved",
            failures.DROPPED: "the connection was closed before an answer",
            }.get(failures.failure_kind(exc), "connection failed")


@dataclass
class Target:
    """A channel with its URL and key read: what `deliver` posts to. Never shown whole."""

    channel: Channel
    url: str = field(repr=False)
    secret: str = field(default="", repr=False)

    @property
    def host(self) -> str:
        """The host for http(s) channels; for apprise only the scheme, as apprise URLs keep
        tokens where a host would be (discord://ID/TOKEN)."""
        if self.channel.kind == "apprise":
            return self.url.split("://", 1)[0] + "://" if "://" in self.url else "?"
        return url_host(self.url)

    def describe(self) -> str:
        return f"{self.channel.name} ({self.channel.kind}, {self.host})"

    def scrub(self, text: str) -> str:
        """`text` without the URL, its host, path or query, or the key."""
        pieces = [self.url, self.secret]
        try:
            parts = urlsplit(self.url)
            pieces += [parts.netloc, parts.path, parts.query, parts.password or ""]
        except ValueError:
            pass
        for piece in sorted({p for p in pieces if len(p) >= 8}, key=len, reverse=True):
            text = text.replace(piece, "***")
        return text


def resolve(channel: Channel, where: str = "") -> Target:
    """Read a channel's URL and key from where the plan says they are; BadInput (before
    anything is sent) when one is missing or the URL is not one the channel can use."""
    where = where or channel.where or f"notifications[{channel.name}]"
    url = read_reference(where, "url", channel.url_env, channel.url_file)
    if channel.kind == "apprise":
        _check_apprise_url(where, channel, url)
    else:
        check_http_url(where, channel.url_env, channel.url_file, url)
    secret = ""
    if channel.secret_env or channel.secret_file:
        secret = read_reference(where, "secret", channel.secret_env, channel.secret_file)
    return Target(channel, url, secret)


def check_channels(channels: list[Channel]) -> list[str]:
    """Read every channel's URL and key now, so a missing one is a BadInput before the rollout
    starts; returns how each may be shown (name, kind, host)."""
    return [resolve(channel, channel.where or f"notifications[{index}]").describe()
            for index, channel in enumerate(channels)]


def _check_apprise_url(where: str, channel: Channel, url: str) -> None:
    field_name = f"{where}.url_env" if channel.url_env else f"{where}.url_file"
    source = channel.url_env or channel.url_file
    try:
        import apprise
    except ImportError:
        raise BadInput(f"{where}.kind", "apprise",
                       "needs the apprise package (pip install apprise)") from None
    _apprise_status_handler()  # before apprise logs anything about the URL
    if apprise.Apprise.instantiate(url) is None:
        raise BadInput(field_name, source,
                       "must hold a URL apprise knows (mailto://, discord://, json://, ...)")


# ---------------------------------------------------------------- events and their messages


def one_line(text: Any, limit: int = REASON_LIMIT) -> str:
    """`text` on one line, at most `limit` characters (a reason, not a traceback)."""
    line = " ".join(str(text or "").split())
    return line if len(line) <= limit else line[:limit - 1] + "…"


@dataclass
class Event:
    """Something a person should hear about. `key` identifies it for idempotency: the caller
    derives it from the release and phase (e.g. RELEASE/PHASE/KIND), so a step re-run after a
    crash produces the same key and the delivery log can tell it was announced already."""

    kind: str
    service: str
    namespace: str
    release: str
    phase: str = ""
    verdict: str | None = None
    reason: str = ""
    report: str = ""  # where the report is: a path or URL
    judges: list[str] = field(default_factory=list)  # for `step`: the judges that decided
    at: str = field(default_factory=times.timestamp)
    key: str = ""  # "" = RELEASE/PHASE/KIND

    def __post_init__(self) -> None:
        if self.kind not in EVENTS:
            raise BadInput("event.kind", self.kind, f"must be one of {', '.join(EVENTS)}")
        if self.verdict is not None:
            self.verdict = str(getattr(self.verdict, "value", self.verdict))
        self.reason = one_line(self.reason)
        self.judges = [one_line(judge, 200) for judge in self.judges]
        if not self.key:
            self.key = f"{self.release}/{self.phase}/{self.kind}"

    def to_dict(self) -> dict[str, Any]:
        """The generic webhook's body: these field names are stable."""
        return asdict(self)


def title(event: Event) -> str:
    headline = HEADLINES[event.kind]
    if event.kind == "step" and event.verdict:
        headline = f"{headline} {event.verdict}"
    return f"{event.service}.{event.namespace}: {headline}"


def summary(event: Event) -> str:
    """The whole event on one line: chat notifications' fallback text."""
    where = ", ".join(part for part in (f"release {event.release}" if event.release else "",
                                        f"phase {event.phase}" if event.phase else "") if part)
    text = f"canarykit {title(event)}" + (f" ({where})" if where else "")
    return text + (f": {event.reason}" if event.reason else "")


def facts(event: Event) -> list[tuple[str, str]]:
    """(label, value) pairs a message shows, the empty ones left out."""
    found = [
        ("Service", f"{event.service}.{event.namespace}"),
        ("Release", event.release),
        ("Phase", event.phase),
        ("Verdict", event.verdict or ""),
        ("Judges", "; ".join(event.judges)),
        ("Report", event.report),
        ("Time", event.at),
    ]
    return [(label, value) for label, value in found if value]


def _slack_text(text: str) -> str:
    """Slack mrkdwn treats &, < and > as control characters."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_payload(event: Event) -> dict[str, Any]:
    """A Slack incoming webhook message: fallback text plus Block Kit blocks (a header, the
    reason, the facts as section fields; within Slack's limits of 150/3000/2000 characters)."""
    blocks: list[dict[str, Any]] = [{
        "type": "header",
        "text": {"type": "plain_text", "text": one_line(f"canarykit: {title(event)}", 150)},
    }]
    if event.reason:
        blocks.append({"type": "section",
                       "text": {"type": "mrkdwn", "text": _slack_text(event.reason)}})
    blocks.append({"type": "section", "fields": [
        {"type": "mrkdwn", "text": f"*{label}*\n{_slack_text(one_line(value, 1900))}"}
        for label, value in facts(event)[:10]
    ]})
    return {"text": _slack_text(summary(event)), "blocks": blocks}


def teams_payload(event: Event) -> dict[str, Any]:
    """A Teams Workflows ("post to a channel when a webhook request is received") message: one
    Adaptive Card attachment with a title, the reason and the facts."""
    body: list[dict[str, Any]] = [{"type": "TextBlock", "text": f"canarykit: {title(event)}",
                                   "size": "Medium", "weight": "Bolder", "wrap": True}]
    if event.reason:
        body.append({"type": "TextBlock", "text": event.reason, "wrap": True})
    body.append({"type": "FactSet",
                 "facts": [{"title": label, "value": value} for label, value in facts(event)]})
    card = {"$schema": ADAPTIVE_CARD_SCHEMA, "type": "AdaptiveCard",
            "version": ADAPTIVE_CARD_VERSION, "body": body}
    return {"type": "message", "attachments": [{
        "contentType": "application/vnd.microsoft.card.adaptive",
        "contentUrl": None,
        "content": card,
    }]}


def webhook_body(event: Event) -> bytes:
    """The generic webhook's exact body bytes (the signature is computed over these)."""
    return json.dumps(event.to_dict(), sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False).encode()


def request_for(target: Target, event: Event) -> tuple[bytes, dict[str, str]]:
    """The body and headers an http(s) channel is sent."""
    if target.channel.kind == "slack":
        body = json.dumps(slack_payload(event)).encode()
    elif target.channel.kind == "teams":
        body = json.dumps(teams_payload(event)).encode()
    else:
        body = webhook_body(event)
    headers = {"Content-Type": "application/json", EVENT_HEADER: event.kind,
               DELIVERY_HEADER: event.key}
    if target.secret:
        headers[SIGNATURE_HEADER] = sign(target.secret, body)
    return body, headers


def apprise_message(event: Event) -> tuple[str, str]:
    """(title, body) for apprise: plain text, the reason first, then the facts."""
    lines = [event.reason] if event.reason else []
    lines += [f"{label}: {value}" for label, value in facts(event)]
    return f"canarykit: {title(event)}", "\n".join(lines)


# ---------------------------------------------------------------- delivery


@dataclass
class Delivery:
    """How one event went to one channel; `error` never holds the URL or the key."""

    channel: str  # the channel's name
    kind: str  # the channel's kind
    event: str  # the event's kind
    key: str
    ok: bool
    attempts: int
    status: int | None = None  # the last HTTP status, None when there was no answer
    error: str = ""
    seconds: float = 0.0
    at: str = field(default_factory=times.timestamp)  # when the outcome was known

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Attempt:
    ok: bool
    status: int | None
    error: str
    retry: bool
    wait: float = 0.0


def deliver(channel: Channel | Target, event: Event, *, timeout: float = 5.0,
            attempts: int = 3, backoff: float = 0.5) -> Delivery:
    """Post `event` to `channel` now: each try bounded by `timeout` seconds, retried with
    exponential backoff on no answer, 429 and 5xx (not on other answers, which will not
    change). A Channel's URL is read first (BadInput when it cannot be)."""
    target = channel if isinstance(channel, Target) else resolve(channel)
    send = _send_apprise if target.channel.kind == "apprise" else _send_http
    started = time.monotonic()
    tries, outcome = 0, _Attempt(False, None, "not tried", False)
    for tries in range(1, max(1, attempts) + 1):
        try:
            outcome = send(target, event, timeout)
        except Exception as exc:  # a library's bug must not lose the outcome
            outcome = _Attempt(False, None, f"failed ({type(exc).__name__})", False)
        if outcome.ok or not outcome.retry or tries >= attempts:
            break
        time.sleep(max(backoff * 2 ** (tries - 1), outcome.wait))
    return Delivery(channel=target.channel.name, kind=target.channel.kind, event=event.kind,
                    key=event.key, ok=outcome.ok, attempts=tries, status=outcome.status,
                    error=target.scrub(outcome.error),
                    seconds=round(time.monotonic() - started, 3))


def _retry_after(value: str | None) -> float:
    try:
        return min(max(float(value or 0), 0.0), MAX_RETRY_AFTER)
    except ValueError:
        return 0.0


def _send_http(target: Target, event: Event, timeout: float) -> _Attempt:
    import requests

    body, headers = request_for(target, event)
    try:
        response = requests.post(target.url, data=body, headers=headers, timeout=timeout,
                                 allow_redirects=False)
    except requests.RequestException as exc:
        retry = isinstance(exc, requests.ConnectionError | requests.Timeout) \
            and not isinstance(exc, requests.exceptions.SSLError)
        return _Attempt(False, None, transport_problem(exc, f"{timeout:g}s"), retry)
    status = response.status_code
    response.close()
    if 200 <= status < 300:
        return _Attempt(True, status, "", False)
    retry = status == 429 or status >= 500
    return _Attempt(False, status, f"answered {status}", retry,
                    _retry_after(response.headers.get("Retry-After")) if retry else 0.0)


class _AppriseStatus(logging.Handler):
    """Catches the HTTP status apprise's plugins name in their warnings ("... error=503."), as
    apprise's notify() says only True or False. Apprise may notify on a worker thread with a
    copy of the caller's context, so the status goes into the box of the current call."""

    PATTERN = re.compile(r"error=(\d{3})\b")

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.box: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar(
            "canarykit_apprise_status", default=None)

    def emit(self, record: logging.LogRecord) -> None:
        box = self.box.get()
        if box is None:
            return
        try:
            found = self.PATTERN.search(record.getMessage())
        except Exception:  # a record that does not format
            return
        if found:
            box.append(int(found.group(1)))


_APPRISE_STATUS: _AppriseStatus | None = None
_APPRISE_LOCK = threading.Lock()


def _apprise_status_handler() -> _AppriseStatus:
    """Installed once: apprise's log stays out of canarykit's (its debug lines hold URLs)."""
    global _APPRISE_STATUS
    with _APPRISE_LOCK:
        if _APPRISE_STATUS is None:
            logger = logging.getLogger("apprise")
            _APPRISE_STATUS = _AppriseStatus()
            logger.addHandler(_APPRISE_STATUS)
            logger.propagate = False
        return _APPRISE_STATUS


def _send_apprise(target: Target, event: Event, timeout: float) -> _Attempt:
    import apprise

    catcher = _apprise_status_handler()
    service = apprise.Apprise.instantiate(target.url)  # a fresh one: no throttling state
    if service is None:
        return _Attempt(False, None, "apprise does not know the URL's service", False)
    service.socket_connect_timeout = timeout
    service.socket_read_timeout = timeout
    notifier = apprise.Apprise()
    notifier.add(service)
    subject, text = apprise_message(event)
    statuses: list[int] = []
    token = catcher.box.set(statuses)
    try:
        sent = bool(notifier.notify(body=text, title=subject))
    finally:
        catcher.box.reset(token)
    if sent:
        return _Attempt(True, None, "", False)
    if not statuses:
        return _Attempt(False, None, "apprise could not deliver it", True)
    status = statuses[-1]
    return _Attempt(False, status, f"answered {status}", status == 429 or status >= 500)


# ---------------------------------------------------------------- the delivery log


def read_log(log_path: str | Path) -> list[dict[str, Any]]:
    """The delivery log's records, oldest first (none when there is no log); a line torn by
    a crash is skipped."""
    try:
        text = Path(log_path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    records = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def delivered(log_path: str | Path) -> set[tuple[str, str]]:
    """(channel name, event key) of every delivery the log records as done."""
    return {(str(r.get("channel")), str(r.get("key"))) for r in read_log(log_path)
            if r.get("ok") is True}


def append_log(log_path: str | Path, delivery: Delivery) -> None:
    """Append one record as a single locked, fsynced write, so concurrent writers never
    interleave and a record that was written survives a crash."""
    path = Path(log_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(delivery.to_dict(), sort_keys=True, ensure_ascii=False) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        view = memoryview(line)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)  # also releases the lock


# ---------------------------------------------------------------- the notifier


class Notifier:
    """Announces events without ever holding up the rollout or announcing one twice.

    `send` only queues (a background daemon thread delivers), so a hanging or dead chat costs
    the rollout nothing. Before each delivery the worker reads the delivery log, and skips a
    (channel, key) recorded as delivered, by this process or one that crashed before; each
    outcome is appended to the log as soon as it is known. Every URL is read here, so a
    missing one is a BadInput before anything is sent.
    """

    def __init__(self, channels: list[Channel], log_path: str | Path | None = None, *,
                 timeout: float = 5.0, attempts: int = 3, backoff: float = 0.5) -> None:
        self.targets = [resolve(channel, channel.where or f"notifications[{index}]")
                        for index, channel in enumerate(channels)]
        self.log_path = Path(log_path) if log_path is not None else None
        self._options = {"timeout": timeout, "attempts": attempts, "backoff": backoff}
        self._queue: queue.SimpleQueue[tuple[Target, Event] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._claimed: set[tuple[str, str]] = set()  # (channel, key) this notifier took on
        self._results: list[Delivery] = []
        self._thread: threading.Thread | None = None
        self._closed = False
        self._abandon = threading.Event()

    def __enter__(self) -> Notifier:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def send(self, event: Event) -> int:
        """Queue `event` for every channel that wants it; returns at once, with how many
        deliveries were queued (0 after close, or when this notifier had it queued already)."""
        queued = 0
        with self._lock:
            if self._closed:
                return 0
            for target in self.targets:
                pair = (target.channel.name, event.key)
                if not target.channel.wants(event.kind) or pair in self._claimed:
                    continue
                self._claimed.add(pair)
                self._queue.put((target, event))
                queued += 1
            if queued and self._thread is None:
                self._thread = threading.Thread(target=self._work, name="canarykit-notifier",
                                                daemon=True)
                self._thread.start()
        return queued

    def close(self, timeout: float = 10.0) -> list[Delivery]:
        """Wait at most `timeout` seconds for the queue to drain; what is still queued then is
        abandoned and recorded as not delivered (a delivery under way is recorded when it
        ends, if the process lives). Returns the outcomes known so far."""
        with self._lock:
            self._closed = True
            thread = self._thread
        if thread is not None:
            self._queue.put(None)
            thread.join(max(0.0, timeout))
            if thread.is_alive():
                self._abandon.set()
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                self._give_up(*item)
        with self._lock:
            return list(self._results)

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            target, event = item
            if self._abandon.is_set():
                self._give_up(target, event)
                continue
            try:
                if self.log_path is not None \
                        and (target.channel.name, event.key) in delivered(self.log_path):
                    continue
                outcome = deliver(target, event, **self._options)
            except Exception as exc:  # the worker must outlive anything one delivery does
                outcome = Delivery(target.channel.name, target.channel.kind, event.kind,
                                   event.key, ok=False, attempts=0,
                                   error=f"failed ({type(exc).__name__})")
            self._record(outcome)

    def _give_up(self, target: Target, event: Event) -> None:
        self._record(Delivery(target.channel.name, target.channel.kind, event.kind, event.key,
                              ok=False, attempts=0,
                              error="abandoned: not sent before the notifier closed"))

    def _record(self, outcome: Delivery) -> None:
        if self.log_path is not None:
            try:
                append_log(self.log_path, outcome)
            except OSError as exc:
                outcome.error = one_line(f"{outcome.error}; not recorded in the delivery log "
                                         f"({exc.strerror or type(exc).__name__})".lstrip("; "))
        with self._lock:
            self._results.append(outcome)
