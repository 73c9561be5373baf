"""Notification channels: the plan names where URLs and keys are kept, messages have the shape
Slack, Teams and webhook receivers expect, delivery retries only what may succeed later, and the
notifier never holds up a rollout nor announces anything twice. Deliveries go to a local
receiver on 127.0.0.1."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import socket
import time

import pytest
import yaml

from canarykit.core.errors import BadInput
from canarykit.notify import channels as ch
from canarykit.notify.channels import Channel, Event, Notifier, deliver, parse_channels
from tests.notify.receiver import receiver  # noqa: F401  (the fixture)

SLACK_PATH = "/services/T0001/B0002/Zk3yQ9sEcReTpAtHpArT"  # a webhook URL's path is its token
SECRET = "whsec-9f8e7d6c5b4a-signing-key"


def event(kind: str = "rolled-back", **changes) -> Event:
    values = {"service": "reviews", "namespace": "shop", "release": "reviews-20261127T094853Z",
              "phase": "analyze-25", "verdict": "FAIL",
              "reason": "success rate 91.2% is below 99%", "report": "reports/reviews/r1/"}
    values.update(changes)
    return Event(kind, **values)


def channel(kind: str, env: str, **changes) -> Channel:
    """A parsed channel whose URL is in environment variable `env`."""
    entry = {"kind": kind, "url_env": env, **changes}
    if kind == "webhook":
        entry.setdefault("secret_env", "HOOK_SECRET")
    return parse_channels([entry])[0]


@pytest.fixture
def env(monkeypatch, receiver):  # noqa: F811
    """URLs of the receiver (and the webhook key) in the environment, as a plan expects."""
    monkeypatch.setenv("SLACK_URL", receiver.url(SLACK_PATH))
    monkeypatch.setenv("TEAMS_URL", receiver.url("/workflows/abc/triggers/manual/paths/invoke"))
    monkeypatch.setenv("HOOK_URL", receiver.url("/release-hook"))
    monkeypatch.setenv("HOOK_SECRET", SECRET)
    return monkeypatch


class Collected(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---------------------------------------------------------------- the plan's entries


def test_no_notifications_means_no_channels():
    assert parse_channels(None) == []
    assert parse_channels([]) == []


def test_a_channel_hears_every_event_and_is_named_after_its_kind_by_default():
    found = parse_channels([
        {"kind": "slack", "url_env": "SLACK_URL"},
        {"kind": "slack", "url_file": "/run/secrets/slack-2"},
        {"kind": "teams", "url_env": "TEAMS_URL", "events": ["rolled-back", "error"],
         "name": "ops-teams"},
        {"kind": "webhook", "url_env": "HOOK_URL", "secret_env": "HOOK_SECRET"},
    ])
    assert [c.name for c in found] == ["slack", "slack-2", "ops-teams", "webhook"]
    assert found[0].events == list(ch.EVENTS)
    assert found[2].events == ["rolled-back", "error"]
    assert found[1].url_file == "/run/secrets/slack-2"
    assert found[3].secret_env == "HOOK_SECRET"


def test_a_default_name_steps_around_a_name_given_explicitly():
    found = parse_channels([{"kind": "slack", "url_env": "A"},
                            {"kind": "slack", "url_env": "B", "name": "slack"}])
    assert [c.name for c in found] == ["slack-2", "slack"]


def test_channels_round_trip_through_yaml():
    found = parse_channels([
        {"kind": "webhook", "url_file": "/run/hook-url", "secret_file": "/run/hook-key",
         "events": ["step"]},
        {"kind": "apprise", "url_env": "APPRISE_URL", "name": "mail"},
    ])
    text = yaml.safe_dump([c.to_dict() for c in found])
    assert parse_channels(yaml.safe_load(text)) == found


@pytest.mark.parametrize(("entry", "field", "value"), [
    ({"kind": "pager", "url_env": "U"}, "notifications[0].kind", "pager"),
    ({"kind": "slack"}, "notifications[0].url_env", None),
    ({"kind": "slack", "url_env": "U", "url_file": "/f"}, "notifications[0].url_file", "/f"),
    ({"kind": "slack", "url_env": "not a name"}, "notifications[0].url_env", "not a name"),
    ({"kind": "slack", "url_env": ""}, "notifications[0].url_env", ""),
    ({"kind": "webhook", "url_env": "U"}, "notifications[0].secret_env", None),
    ({"kind": "teams", "url_env": "U", "secret_env": "K"}, "notifications[0].secret_env", "K"),
    ({"kind": "slack", "url_env": "U", "events": ["deployed"]}, "notifications[0].events[0]",
     "deployed"),
    ({"kind": "slack", "url_env": "U", "events": []}, "notifications[0].events", []),
    ({"kind": "slack", "url_env": "U", "name": "ops slack"}, "notifications[0].name",
     "ops slack"),
    ("slack", "notifications[0]", "str"),
])
def test_a_bad_entry_is_refused_naming_its_field(entry, field, value):
    with pytest.raises(BadInput) as caught:
        parse_channels([entry])
    assert (caught.value.field, caught.value.value) == (field, value)


def test_two_channels_with_one_name_are_refused():
    with pytest.raises(BadInput) as caught:
        parse_channels([{"kind": "slack", "url_env": "A", "name": "ops"},
                        {"kind": "teams", "url_env": "B", "name": "ops"}])
    assert caught.value.field == "notifications[1].name"


def test_a_url_written_into_the_plan_is_refused_without_echoing_it():
    url = "https://hooks.slack.com" + SLACK_PATH
    with pytest.raises(BadInput) as caught:
        parse_channels([{"kind": "slack", "url": url}])
    assert caught.value.field == "notifications[0].url"
    assert "url_env" in str(caught.value) and "known:" in str(caught.value)
    assert url not in str(caught.value) and SLACK_PATH not in str(caught.value)


def test_notifications_must_be_a_list():
    with pytest.raises(BadInput) as caught:
        parse_channels({"kind": "slack"})
    assert caught.value.field == "notifications"


# ---------------------------------------------------------------- reading the URLs


def test_a_missing_variable_is_refused_naming_the_field_and_the_variable(monkeypatch):
    monkeypatch.setenv("SLACK_URL", "https://hooks.slack.com" + SLACK_PATH)
    monkeypatch.delenv("TEAMS_URL", raising=False)
    found = parse_channels([{"kind": "slack", "url_env": "SLACK_URL"},
                            {"kind": "teams", "url_env": "TEAMS_URL"}])
    with pytest.raises(BadInput) as caught:
        Notifier(found)
    assert (caught.value.field, caught.value.value) == ("notifications[1].url_env", "TEAMS_URL")


def test_an_empty_variable_is_refused_too(monkeypatch):
    monkeypatch.setenv("SLACK_URL", "  ")
    with pytest.raises(BadInput) as caught:
        ch.resolve(channel("slack", "SLACK_URL"))
    assert caught.value.field == "notifications[0].url_env"


def test_a_url_that_is_not_http_is_refused_without_showing_it(monkeypatch):
    monkeypatch.setenv("SLACK_URL", "ftp://files.example.com/Zk3yQ9sEcReTpAtHpArT")
    with pytest.raises(BadInput) as caught:
        ch.resolve(channel("slack", "SLACK_URL"))
    assert (caught.value.field, caught.value.value) == ("notifications[0].url_env", "SLACK_URL")
    assert "Zk3yQ9sEcReTpAtHpArT" not in str(caught.value)


def test_a_url_is_read_from_a_file_and_an_unreadable_file_is_refused(tmp_path):
    kept = tmp_path / "slack-url"
    kept.write_text("https://hooks.slack.com" + SLACK_PATH + "\n")
    target = ch.resolve(parse_channels([{"kind": "slack", "url_file": str(kept)}])[0])
    assert target.url == "https://hooks.slack.com" + SLACK_PATH
    assert target.describe() == "slack (slack, hooks.slack.com)"
    missing = str(tmp_path / "nothing-here")
    with pytest.raises(BadInput) as caught:
        ch.resolve(parse_channels([{"kind": "slack", "url_file": missing}])[0])
    assert (caught.value.field, caught.value.value) == ("notifications[0].url_file", missing)


def test_a_webhook_key_must_be_there_too(monkeypatch, env):
    monkeypatch.delenv("HOOK_SECRET")
    with pytest.raises(BadInput) as caught:
        ch.resolve(channel("webhook", "HOOK_URL"))
    assert (caught.value.field, caught.value.value) == ("notifications[0].secret_env",
                                                       "HOOK_SECRET")


def test_a_channel_is_shown_by_name_kind_and_host_only(monkeypatch):
    monkeypatch.setenv("HOOK_URL", "https://bot:hunter2hunter2@hooks.example.com:8443/x?t=abc")
    monkeypatch.setenv("HOOK_SECRET", SECRET)
    target = ch.resolve(channel("webhook", "HOOK_URL", name="release"))
    assert target.describe() == "release (webhook, hooks.example.com:8443)"
    assert "hunter2" not in repr(target) and SECRET not in repr(target)


def test_an_apprise_channel_shows_only_its_scheme(monkeypatch):
    monkeypatch.setenv("APPRISE_URL", "discord://4174216298/JHMHI8qBe7bk2ZwO5U711o3dV_js")
    target = ch.resolve(channel("apprise", "APPRISE_URL"))
    assert target.describe() == "apprise (apprise, discord://)"


def test_an_apprise_url_apprise_does_not_know_is_refused(monkeypatch):
    monkeypatch.setenv("APPRISE_URL", "nosuchservice://token-abc")
    with pytest.raises(BadInput) as caught:
        ch.resolve(channel("apprise", "APPRISE_URL"))
    assert (caught.value.field, caught.value.value) == ("notifications[0].url_env",
                                                       "APPRISE_URL")
    assert "token-abc" not in str(caught.value)


# ---------------------------------------------------------------- events and messages


def test_an_event_keeps_one_short_line_of_reason_and_a_stable_key():
    long = "Traceback (most recent call last):\n  File x\n" + "y" * 1000
    found = event(reason=long)
    assert "\n" not in found.reason and len(found.reason) == ch.REASON_LIMIT
    assert found.reason.endswith("…")
    assert found.key == "reviews-20261127T094853Z/analyze-25/rolled-back"
    assert event(key="r1/analyze-25/step").key == "r1/analyze-25/step"


def test_an_unknown_event_kind_is_refused():
    with pytest.raises(BadInput) as caught:
        event("deployed")
    assert caught.value.field == "event.kind"


def test_the_slack_message_is_block_kit_with_a_fallback_text():
    payload = ch.slack_payload(event("step", verdict="FAIL", reason="p99 612ms > 500ms <b>",
                                     judges=["latency: FAIL", "success-rate: PASS"]))
    assert "reviews.shop" in payload["text"] and "p99 612ms" in payload["text"]
    header, reason, details = payload["blocks"]
    assert header["type"] == "header" and header["text"]["type"] == "plain_text"
    assert header["text"]["text"] == "canarykit: reviews.shop: step judged FAIL"
    assert reason["text"] == {"type": "mrkdwn", "text": "p99 612ms &gt; 500ms &lt;b&gt;"}
    fields = {f["text"].split("\n")[0]: f["text"].split("\n")[1] for f in details["fields"]}
    assert fields["*Judges*"] == "latency: FAIL; success-rate: PASS"
    assert fields["*Verdict*"] == "FAIL" and fields["*Report*"] == "reports/reviews/r1/"
    assert fields["*Release*"] == "reviews-20261127T094853Z"
    assert len(details["fields"]) <= 10


def test_the_teams_message_carries_one_adaptive_card():
    payload = ch.teams_payload(event())
    assert payload["type"] == "message"
    [attachment] = payload["attachments"]
    assert attachment["contentType"] == "application/vnd.microsoft.card.adaptive"
    assert attachment["contentUrl"] is None
    card = attachment["content"]
    assert card["$schema"] == "http://adaptivecards.io/schemas/adaptive-card.json"
    assert (card["type"], card["version"]) == ("AdaptiveCard", "1.4")
    assert card["body"][0]["text"] == "canarykit: reviews.shop: rolled back"
    assert card["body"][1]["text"] == "success rate 91.2% is below 99%"
    facts = {fact["title"]: fact["value"] for fact in card["body"][2]["facts"]}
    assert facts["Service"] == "reviews.shop" and facts["Phase"] == "analyze-25"


def test_the_webhook_body_is_the_event_with_stable_field_names():
    body = json.loads(ch.webhook_body(event()))
    assert set(body) == {"kind", "service", "namespace", "release", "phase", "verdict",
                         "reason", "report", "judges", "at", "key"}
    assert body["kind"] == "rolled-back" and body["verdict"] == "FAIL"


def test_a_signature_checks_out_only_for_the_same_body_and_key():
    body = ch.webhook_body(event())
    header = ch.sign(SECRET, body)
    assert ch.verify_signature(SECRET, body, header)
    assert not ch.verify_signature(SECRET, body + b" ", header)
    assert not ch.verify_signature("another-key", body, header)


# ---------------------------------------------------------------- delivery


def test_slack_gets_the_blocks_as_json(env, receiver):  # noqa: F811
    delivery = deliver(channel("slack", "SLACK_URL"), event())
    assert (delivery.ok, delivery.attempts, delivery.status) == (True, 1, 200)
    [request] = receiver.requests
    assert (request.method, request.path) == ("POST", SLACK_PATH)
    assert request.header("Content-Type") == "application/json"
    assert request.json()["blocks"][0]["type"] == "header"


def test_teams_gets_a_message_with_the_card(env, receiver):  # noqa: F811
    assert deliver(channel("teams", "TEAMS_URL"), event()).ok
    card = receiver.requests[0].json()["attachments"][0]["content"]
    assert card["version"] == ch.ADAPTIVE_CARD_VERSION


def test_a_webhook_body_is_signed_with_the_key(env, receiver):  # noqa: F811
    sent = event(key="r1/analyze-25/rolled-back")
    assert deliver(channel("webhook", "HOOK_URL"), sent).ok
    [request] = receiver.requests
    expected = hmac.new(SECRET.encode(), request.body, hashlib.sha256).hexdigest()
    assert request.header("X-Canarykit-Signature") == f"sha256={expected}"
    assert request.header("X-Canarykit-Event") == "rolled-back"
    assert request.header("X-Canarykit-Delivery") == "r1/analyze-25/rolled-back"
    assert request.json() == sent.to_dict()


def test_a_server_error_is_retried_until_it_succeeds(env, receiver):  # noqa: F811
    receiver.answer(500)
    delivery = deliver(channel("slack", "SLACK_URL"), event(), backoff=0.01)
    assert (delivery.ok, delivery.attempts, delivery.status) == (True, 2, 200)
    assert len(receiver.requests) == 2


def test_too_many_requests_is_retried(env, receiver):  # noqa: F811
    receiver.answer(429, 503)
    delivery = deliver(channel("slack", "SLACK_URL"), event(), backoff=0.01)
    assert (delivery.ok, delivery.attempts) == (True, 3)


def test_retries_stop_after_the_attempts(env, receiver):  # noqa: F811
    receiver.answer(502, 502, 502, 502)
    delivery = deliver(channel("slack", "SLACK_URL"), event(), attempts=3, backoff=0.01)
    assert (delivery.ok, delivery.attempts, delivery.status) == (False, 3, 502)
    assert delivery.error == "answered 502" and len(receiver.requests) == 3


def test_a_client_error_is_not_retried(env, receiver):  # noqa: F811
    receiver.answer(400)
    delivery = deliver(channel("slack", "SLACK_URL"), event(), backoff=0.01)
    assert (delivery.ok, delivery.attempts, delivery.status) == (False, 1, 400)
    assert delivery.error == "answered 400" and len(receiver.requests) == 1


def test_a_hanging_receiver_costs_at_most_the_timeout(env, receiver):  # noqa: F811
    receiver.hang(30)
    started = time.monotonic()
    delivery = deliver(channel("slack", "SLACK_URL"), event(), timeout=0.5, attempts=1)
    assert time.monotonic() - started < 2.5
    assert (delivery.ok, delivery.status, delivery.error) == (False, None,
                                                             "timed out after 0.5s")


def test_a_refused_connection_is_retried_and_reported_without_the_url(monkeypatch):
    url = f"http://127.0.0.1:{free_port()}{SLACK_PATH}"
    monkeypatch.setenv("SLACK_URL", url)
    delivery = deliver(channel("slack", "SLACK_URL"), event(), attempts=2, backoff=0.01)
    assert (delivery.ok, delivery.attempts, delivery.error) == (False, 2, "connection refused")
    assert SLACK_PATH not in json.dumps(delivery.to_dict())


def test_an_apprise_channel_reaches_the_receiver_through_apprise(monkeypatch, receiver):  # noqa: F811
    monkeypatch.setenv("APPRISE_URL", f"json://127.0.0.1:{receiver.port}/apprise")
    delivery = deliver(channel("apprise", "APPRISE_URL"), event())
    assert (delivery.ok, delivery.attempts) == (True, 1)
    [request] = receiver.requests
    assert request.path == "/apprise"
    body = request.json()
    assert body["title"] == "canarykit: reviews.shop: rolled back"
    assert body["message"].startswith("success rate 91.2% is below 99%\nService: reviews.shop")


def test_apprise_retries_a_server_error_but_not_a_client_error(monkeypatch, receiver):  # noqa: F811
    monkeypatch.setenv("APPRISE_URL", f"json://127.0.0.1:{receiver.port}/apprise")
    receiver.answer(503)
    assert deliver(channel("apprise", "APPRISE_URL"), event(), backoff=0.01).attempts == 2
    receiver.answer(403)
    application_log = Collected()
    logging.getLogger().addHandler(application_log)
    try:
        refused = deliver(channel("apprise", "APPRISE_URL"), event(), backoff=0.01)
    finally:
        logging.getLogger().removeHandler(application_log)
    assert (refused.ok, refused.attempts, refused.status) == (False, 1, 403)
    # apprise's own log (its debug lines hold URLs) does not reach the application's
    assert [r.name for r in application_log.records if r.name.startswith("apprise")] == []


# ---------------------------------------------------------------- the notifier


def test_send_returns_at_once_even_when_the_receiver_hangs(env, receiver, tmp_path):  # noqa: F811
    receiver.hang(30)
    notifier = Notifier([channel("slack", "SLACK_URL")], tmp_path / "notifications.jsonl",
                        timeout=5)
    started = time.monotonic()
    queued = notifier.send(event("started")) + notifier.send(event("step"))
    assert time.monotonic() - started < 0.5
    assert queued == 2
    assert receiver.wait_for(1)
    started = time.monotonic()
    notifier.close(timeout=0.2)
    assert time.monotonic() - started < 1.0
    # the one still queued was abandoned and recorded as not delivered
    records = ch.read_log(tmp_path / "notifications.jsonl")
    assert [(r["event"], r["ok"], r["attempts"]) for r in records] == [("step", False, 0)]
    assert records[0]["error"].startswith("abandoned")


def test_close_waits_for_the_queue_and_returns_the_outcomes(env, receiver, tmp_path):  # noqa: F811
    with Notifier([channel("slack", "SLACK_URL"), channel("teams", "TEAMS_URL")],
                  tmp_path / "log.jsonl") as notifier:
        notifier.send(event("started"))
        notifier.send(event("promoted"))
        outcomes = notifier.close(timeout=10)
    assert sorted((d.channel, d.event, d.ok) for d in outcomes) == [
        ("slack", "promoted", True), ("slack", "started", True),
        ("teams", "promoted", True), ("teams", "started", True)]
    assert len(receiver.requests) == 4


def test_a_resumed_step_does_not_announce_again(env, receiver, tmp_path):  # noqa: F811
    log = tmp_path / "reports" / "reviews" / "r1" / "notifications.jsonl"
    sent = event("step", key="r1/analyze-25/step")
    first = Notifier([channel("slack", "SLACK_URL")], log)
    first.send(sent)
    assert receiver.wait_for(1)
    first.close(timeout=5)
    # the process was killed and the step runs again: a new notifier, the same log
    again = Notifier([channel("slack", "SLACK_URL")], log)
    again.send(event("step", key="r1/analyze-25/step"))
    assert again.close(timeout=5) == []
    assert len(receiver.requests) == 1
    assert [(r["channel"], r["key"], r["ok"]) for r in ch.read_log(log)] == [
        ("slack", "r1/analyze-25/step", True)]


def test_one_notifier_sends_a_key_once(env, receiver, tmp_path):  # noqa: F811
    notifier = Notifier([channel("slack", "SLACK_URL")], tmp_path / "log.jsonl")
    assert notifier.send(event("step", key="k")) == 1
    assert notifier.send(event("step", key="k")) == 0
    notifier.close(timeout=5)
    assert len(receiver.requests) == 1


def test_a_delivery_that_failed_is_tried_again_by_the_next_notifier(env, receiver, tmp_path):  # noqa: F811
    log = tmp_path / "log.jsonl"
    receiver.answer(404)
    first = Notifier([channel("slack", "SLACK_URL")], log)
    first.send(event(key="k"))
    assert [d.ok for d in first.close(timeout=5)] == [False]
    again = Notifier([channel("slack", "SLACK_URL")], log)
    again.send(event(key="k"))
    assert [d.ok for d in again.close(timeout=5)] == [True]
    assert [r["ok"] for r in ch.read_log(log)] == [False, True]


def test_a_channel_hears_only_its_events_but_always_the_test(env, receiver, tmp_path):  # noqa: F811
    notifier = Notifier([channel("slack", "SLACK_URL", events=["rolled-back", "error"])])
    assert notifier.send(event("started")) == 0
    assert notifier.send(event("step")) == 0
    assert notifier.send(event("rolled-back")) == 1
    assert notifier.send(event("test")) == 1
    notifier.close(timeout=5)
    assert [r.header("X-Canarykit-Event") for r in receiver.requests] == ["rolled-back", "test"]


def test_nothing_is_sent_after_close(env, receiver):  # noqa: F811
    notifier = Notifier([channel("slack", "SLACK_URL")])
    notifier.close()
    assert notifier.send(event()) == 0
    assert receiver.requests == []


def test_no_url_or_key_reaches_an_outcome_or_the_log(env, receiver, tmp_path):  # noqa: F811
    log = tmp_path / "log.jsonl"
    receiver.answer(400, 400)
    notifier = Notifier([channel("slack", "SLACK_URL"), channel("webhook", "HOOK_URL")], log,
                        backoff=0.01)
    notifier.send(event(key="k1"))
    outcomes = notifier.close(timeout=5)
    assert [d.ok for d in outcomes] == [False, False]
    written = log.read_text() + repr(outcomes) + repr(notifier.targets)
    for secret in (SECRET, SLACK_PATH, "Zk3yQ9sEcReTpAtHpArT", f":{receiver.port}/"):
        assert secret not in written
    assert set(json.loads(log.read_text().splitlines()[0])) == {
        "at", "channel", "kind", "event", "key", "ok", "attempts", "status", "error",
        "seconds"}


def test_the_log_reads_back_skipping_a_line_torn_by_a_crash(tmp_path):
    log = tmp_path / "log.jsonl"
    assert ch.read_log(log) == []
    ch.append_log(log, ch.Delivery("slack", "slack", "step", "k", ok=True, attempts=1,
                                   status=200))
    with open(log, "a") as handle:
        handle.write('{"channel": "slack", "ok": tr')
    assert [r["key"] for r in ch.read_log(log)] == ["k"]
    assert ch.delivered(log) == {("slack", "k")}


def test_every_channel_can_be_checked_before_the_rollout_starts(env):
    found = parse_channels([{"kind": "slack", "url_env": "SLACK_URL", "name": "ops"},
                            {"kind": "teams", "url_env": "NOT_SET_ANYWHERE"}])
    with pytest.raises(BadInput) as caught:
        ch.check_channels(found)
    assert caught.value.field == "notifications[1].url_env"
    env.setenv("NOT_SET_ANYWHERE", "https://prod-1.westeurope.logic.azure.com:443/x")
    assert ch.check_channels(found)[1] == "teams (teams, prod-1.westeurope.logic.azure.com:443)"
