"""`canarykit notify test PLAN`: every channel of the plan gets a test event; the command says
how each went by name, kind and host, and never shows a URL or key."""

from __future__ import annotations

import argparse

import pytest
import yaml

from canarykit.notify import cli
from tests.notify.receiver import running_receiver

SECRET = "notify-cli-key-7c4a8d09ca3762af61e59520943dc264"


def write_plan(tmp_path, notifications) -> str:
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump({"service": "reviews", "namespace": "shop",
                                    "steps": [{"weight": 50}],
                                    "notifications": notifications}))
    return str(path)


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return cli.run(parser.parse_args(list(argv)))


@pytest.fixture
def receivers():
    with running_receiver() as good, running_receiver() as bad:
        yield good, bad


def test_every_channel_delivered_exits_0(tmp_path, monkeypatch, capsys, receivers):
    good, _ = receivers
    monkeypatch.setenv("SLACK_URL", good.url("/services/T1/B2/tokentokentoken"))
    monkeypatch.setenv("HOOK_URL", good.url("/hook"))
    monkeypatch.setenv("HOOK_SECRET", SECRET)
    plan = write_plan(tmp_path, [
        {"kind": "slack", "url_env": "SLACK_URL", "name": "ops-slack", "events": ["error"]},
        {"kind": "webhook", "url_env": "HOOK_URL", "secret_env": "HOOK_SECRET"},
    ])
    assert run("test", plan) == 0
    out = capsys.readouterr().out
    assert f"ops-slack (slack, 127.0.0.1:{good.port}): delivered" in out
    assert f"webhook (webhook, 127.0.0.1:{good.port}): delivered" in out
    assert "2 of 2 channels" in out
    assert sorted(r.header("X-Canarykit-Event") for r in good.requests) == ["test", "test"]
    assert good.requests[0].json() is not None


def test_a_failing_channel_exits_1_and_shows_why_without_the_url(tmp_path, monkeypatch, capsys,
                                                                 receivers):
    good, bad = receivers
    bad.answer(404)
    monkeypatch.setenv("SLACK_URL", good.url("/services/T1/B2/tokentokentoken"))
    monkeypatch.setenv("TEAMS_URL", bad.url("/workflows/abc/triggers/manual/paths/invoke"))
    plan = write_plan(tmp_path, [{"kind": "slack", "url_env": "SLACK_URL"},
                                 {"kind": "teams", "url_env": "TEAMS_URL"}])
    assert run("test", plan) == 1
    captured = capsys.readouterr()
    assert f"teams (teams, 127.0.0.1:{bad.port}): FAILED: answered 404 (1 attempt)" \
        in captured.out
    assert "slack (slack" in captured.out and "1 of 2 channels" in captured.out
    for secret in ("tokentokentoken", "/workflows/abc", "/services/"):
        assert secret not in captured.out + captured.err


def test_a_missing_variable_exits_2_naming_the_field_and_sends_nothing(tmp_path, monkeypatch,
                                                                       capsys, receivers):
    good, _ = receivers
    monkeypatch.setenv("SLACK_URL", good.url("/services/T1/B2/tokentokentoken"))
    monkeypatch.delenv("TEAMS_URL", raising=False)
    plan = write_plan(tmp_path, [{"kind": "slack", "url_env": "SLACK_URL"},
                                 {"kind": "teams", "url_env": "TEAMS_URL"}])
    assert run("test", plan) == 2
    err = capsys.readouterr().err
    assert "notifications[1].url_env" in err and "TEAMS_URL" in err
    assert good.requests == []


def test_a_plan_without_channels_exits_2(tmp_path, capsys):
    assert run("test", write_plan(tmp_path, None)) == 2
    assert "notifications" in capsys.readouterr().err
