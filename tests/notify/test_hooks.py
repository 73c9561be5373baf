"""Webhooks the rollout waits for: checked like channels, called once, bounded by their timeout,
ok only on 2xx, and described without their URL. Calls go to a local receiver on 127.0.0.1."""

from __future__ import annotations

import hashlib
import hmac
import socket
import time

import pytest
import yaml

from canarykit.core.errors import BadInput
from canarykit.notify.hooks import Hook, call_hook, check_hooks, parse_hooks
from tests.notify.receiver import receiver  # noqa: F401  (the fixture)

SECRET = "hook-key-5d41402abc4b2a76b9719d911017c592"


def hook(**changes) -> Hook:
    entry = {"kind": "pre-rollout", "url_env": "LOADTEST_URL", **changes}
    return parse_hooks([entry])[0]


@pytest.fixture
def env(monkeypatch, receiver):  # noqa: F811
    monkeypatch.setenv("LOADTEST_URL", receiver.url("/loadtest/start"))
    monkeypatch.setenv("HOOK_SECRET", SECRET)
    return monkeypatch


# ---------------------------------------------------------------- the plan's entries


def test_a_hook_has_a_ten_second_timeout_and_its_kind_as_name_by_default():
    found = parse_hooks([{"kind": "pre-rollout", "url_env": "A"},
                         {"kind": "pre-rollout", "url_file": "/run/b", "name": "loadtest",
                          "timeout": "1m", "secret_env": "K",
                          "metadata": {"cmd": "hey -z 1m http://reviews"}},
                         {"kind": "confirm-promotion", "url_env": "C"}])
    assert [(h.name, h.timeout) for h in found] == [("pre-rollout", "10s"), ("loadtest", "1m"),
                                                    ("confirm-promotion", "10s")]
    assert found[1].timeout_seconds == 60.0
    assert found[1].metadata == {"cmd": "hey -z 1m http://reviews"}
    assert parse_hooks(None) == []


def test_hooks_round_trip_through_yaml():
    found = parse_hooks([{"kind": "post-rollout", "url_env": "A", "secret_file": "/k",
                          "metadata": {"team": "shop"}}])
    assert parse_hooks(yaml.safe_load(yaml.safe_dump([h.to_dict() for h in found]))) == found


@pytest.mark.parametrize(("entry", "field", "value"), [
    ({"kind": "pre-deploy", "url_env": "A"}, "webhooks[0].kind", "pre-deploy"),
    ({"kind": "pre-step"}, "webhooks[0].url_env", None),
    ({"kind": "pre-step", "url_env": "A", "timeout": "0s"}, "webhooks[0].timeout", "0s"),
    ({"kind": "pre-step", "url_env": "A", "timeout": "soon"}, "webhooks[0].timeout", "soon"),
    ({"kind": "pre-step", "url_env": "A", "timeout": 10}, "webhooks[0].timeout", 10),
    ({"kind": "pre-step", "url_env": "A", "metadata": {"duration": 60}},
     "webhooks[0].metadata.duration", 60),
    ({"kind": "pre-step", "url_env": "A", "metadata": ["cmd"]}, "webhooks[0].metadata",
     ["cmd"]),
    ({"kind": "pre-step", "url_env": "A", "secret_env": "K", "secret_file": "/k"},
     "webhooks[0].secret_file", "/k"),
])
def test_a_bad_hook_is_refused_naming_its_field(entry, field, value):
    with pytest.raises(BadInput) as caught:
        parse_hooks([entry])
    assert (caught.value.field, caught.value.value) == (field, value)


def test_a_missing_variable_is_refused_before_anything_is_sent(monkeypatch, receiver):  # noqa: F811
    monkeypatch.delenv("LOADTEST_URL", raising=False)
    with pytest.raises(BadInput) as caught:
        call_hook(hook(), {})
    assert (caught.value.field, caught.value.value) == ("webhooks[0].url_env", "LOADTEST_URL")
    with pytest.raises(BadInput):
        check_hooks([hook()])
    assert receiver.requests == []


def test_hooks_are_described_by_name_kind_and_host(monkeypatch):
    monkeypatch.setenv("LOADTEST_URL", "https://ci.example.com/hooks/run?token=abcdef123456")
    assert check_hooks([hook(name="loadtest")]) == ["loadtest (pre-rollout, ci.example.com)"]


# ---------------------------------------------------------------- calls


def test_the_body_carries_kind_name_metadata_and_payload_and_is_signed(env, receiver):  # noqa: F811
    called = hook(name="loadtest", secret_env="HOOK_SECRET", metadata={"cmd": "hey -z 1m"})
    result = call_hook(called, {"release": "r1", "service": "reviews", "key": "r1/pre-rollout",
                                "kind": "not-this", "name": "nor-this"})
    assert (result.ok, result.status, result.reason) == (True, 200, "answered 200")
    assert (result.hook, result.kind) == ("loadtest", "pre-rollout")
    [request] = receiver.requests
    assert request.path == "/loadtest/start"
    assert request.json() == {"kind": "pre-rollout", "name": "loadtest",
                              "metadata": {"cmd": "hey -z 1m"}, "release": "r1",
                              "service": "reviews", "key": "r1/pre-rollout"}
    expected = hmac.new(SECRET.encode(), request.body, hashlib.sha256).hexdigest()
    assert request.header("X-Canarykit-Signature") == f"sha256={expected}"
    assert request.header("X-Canarykit-Event") == "pre-rollout"
    assert request.header("X-Canarykit-Delivery") == "r1/pre-rollout"


def test_an_unsigned_hook_sends_no_signature(env, receiver):  # noqa: F811
    assert call_hook(hook(), {}).ok
    assert receiver.requests[0].header("X-Canarykit-Signature") is None


def test_a_server_error_is_not_ok_and_not_retried(env, receiver):  # noqa: F811
    receiver.answer(503)
    result = call_hook(hook(kind="confirm-promotion"), {})
    assert (result.ok, result.status, result.reason) == (False, 503, "answered 503")
    assert len(receiver.requests) == 1


def test_a_hanging_hook_is_bounded_by_its_timeout(env, receiver):  # noqa: F811
    receiver.hang(30)
    started = time.monotonic()
    result = call_hook(hook(timeout="1s"), {})
    assert time.monotonic() - started < 3
    assert (result.ok, result.status, result.reason) == (False, None, "timed out after 1s")


def test_a_refused_connection_says_so_without_the_url(monkeypatch):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("LOADTEST_URL", f"http://127.0.0.1:{port}/secret-path-0123456789")
    result = call_hook(hook(), {})
    assert (result.ok, result.status, result.reason) == (False, None, "connection refused")
    assert "secret-path" not in repr(result.to_dict())
