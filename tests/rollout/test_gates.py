"""People in the loop: approval gates, webhooks and the messages a release sends.

The pure parts first; then whole releases through `python -m canarykit.rollout.driver` against
the module's lab, with a local HTTP receiver standing in for Slack, a webhook channel and the
Flagger-style webhooks.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import subprocess
import time
from pathlib import Path

import pytest

from canarykit.cluster import audit
from canarykit.cluster import client as cluster
from canarykit.lab import processes as lab
from canarykit.rollout import driver as rollout
from canarykit.rollout import gates
from canarykit.rollout.plan import PhaseSpec
from tests.lab_fixture import kube, wait_until
from tests.notify.receiver import Receiver, running_receiver
from tests.rollout.test_driver import (  # noqa: F401
    all_on_stable,
    chain_intact,
    command,
    environment,
    lab_now,
    loaded_lab,
    release,
    release_folder,
    write_plan,
)

SECRET = "s3cr3t-hmac-key-for-tests"
NO_ANALYSIS = [{"weight": 25, "analysis": False}]


# ---------------------------------------------------------------- the pure parts


def vs_with(annotations: dict[str, str]) -> dict:
    return {"metadata": {"name": "reviews", "annotations": annotations}}


def test_an_approval_counts_only_for_the_release_it_names():
    vs = vs_with({gates.APPROVE_ANNOTATION: "v2-1", gates.APPROVER_ANNOTATION: "alice",
                  gates.APPROVAL_REASON_ANNOTATION: "looks\ngood"})
    found = gates.approval(vs, "v2-1")
    assert found == {"decision": "approved", "by": "alice", "reason": "looks good",
                     "how": "annotation canarykit.io/approve on VirtualService reviews"}
    assert gates.approval(vs, "v2-2") is None  # a stale approval never opens a later release


def test_a_rejection_wins_over_an_approval_of_the_same_release_and_who_may_be_unknown():
    vs = vs_with({gates.APPROVE_ANNOTATION: "r", gates.REJECT_ANNOTATION: "r"})
    assert gates.approval(vs, "r")["decision"] == "rejected"
    assert gates.approval(vs, "r")["by"] == "unknown"


def test_the_approval_patch_clears_the_opposite_decision():
    patch = gates.approval_patch("r", reject=True, by="bob", reason="")
    assert patch["metadata"]["annotations"] == {
        gates.REJECT_ANNOTATION: "r", gates.APPROVE_ANNOTATION: None,
        gates.APPROVER_ANNOTATION: "bob", gates.APPROVAL_REASON_ANNOTATION: None}


def test_a_step_message_names_the_judges_that_decided():
    spec = PhaseSpec("analyze-25", "analyze", judged=True)
    record = {"verdict": "FAIL", "judgements": [
        {"judge": "success-rate", "verdict": "FAIL"}, {"judge": "latency", "verdict": "PASS"}]}
    assert gates.step_message(spec, record) == ("step", ["success-rate"])
    held = {"verdict": "INCONCLUSIVE", "judgements": [{"judge": "x", "verdict": "PASS"}]}
    assert gates.step_message(spec, held) == ("held", ["x"])


# ---------------------------------------------------------------- whole releases


def gate_plan(tmp_path: Path, state, receiver: Receiver, **changes) -> Path:
    """A plan announcing everything to a signed webhook channel on the receiver."""
    data = {"steps": [*NO_ANALYSIS, {"approve": {"check_every": "1s"}}, {"promote": {}}],
            "notifications": [{"kind": "webhook", "url_env": "TEST_EVENTS_URL",
                               "secret_env": "TEST_EVENTS_SECRET", "name": "events"}],
            **changes}
    return write_plan(tmp_path, state, **data)


def run_env(receiver: Receiver, **extra: str) -> dict[str, str]:
    return {**environment(), "TEST_EVENTS_URL": receiver.url("/events"),
            "TEST_EVENTS_SECRET": SECRET, **extra}


def cli(tmp_path: Path, env: dict[str, str], *args: str,
        timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(command(*args), cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=timeout)


def events(receiver: Receiver, path: str = "/events") -> list[dict]:
    found = []
    for request in receiver.requests:
        if request.path != path:
            continue
        expected = hmac.new(SECRET.encode(), request.body, hashlib.sha256).hexdigest()
        assert request.header("X-Canarykit-Signature") == f"sha256={expected}"
        found.append(request.json())
    return found


def kinds(receiver: Receiver) -> list[str]:
    return [event["kind"] for event in events(receiver)]


def waiting_at_gate(state) -> bool:
    driver_state = rollout.lease_state(rollout.read_lease(kube(state), state.service))
    return bool(driver_state and driver_state.waiting)


def answered_at_gate(tmp_path, state, receiver, path, *answer: str) -> tuple[int, str]:
    """`rollout run` of the plan, answered by `rollout approve ANSWER` once it waits at the
    approve step: (its exit status, its output)."""
    env = run_env(receiver)
    runner = subprocess.Popen(command("run", str(path)), cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_until(lambda: waiting_at_gate(state), "the release waiting at approve", timeout=90)
        given = cli(tmp_path, env, "approve", str(path), *answer)
        assert given.returncode == 0, given.stdout + given.stderr
        output, _ = runner.communicate(timeout=120)
    finally:
        runner.kill()
    return runner.returncode, output


@pytest.mark.lab
def test_run_waits_at_the_approve_step_until_approved_then_promotes(tmp_path, lab_now):  # noqa: F811
    with running_receiver() as receiver:
        path = gate_plan(tmp_path, lab_now, receiver)
        returncode, output = answered_at_gate(tmp_path, lab_now, receiver, path,
                                              "--reason", "dashboards fine")
        assert returncode == 0, output
        receiver.wait_for(5, timeout=10)
        summary = release(tmp_path)
    assert summary["status"] == "promoted"
    gate = next(p for p in summary["phases"] if p["name"] == "approve")
    assert gate["verdict"] == "APPROVED" and gate["notebook"] is None
    actor = kube(lab_now).actor
    assert gate["approval"]["by"] == actor and gate["approval"]["reason"] == "dashboards fine"
    folder = release_folder(tmp_path)
    decisions = [r for r in audit.read_records(folder / "audit.jsonl")
                 if r["operation"] == "approval-approved"]
    assert [(r["actor"], r["target"]) for r in decisions] == [
        (actor, f"release/{summary['release']}")]
    assert chain_intact(folder, lab_now)
    assert kinds(receiver) == ["started", "step", "waiting", "approved", "promoted"]
    assert {e["release"] for e in events(receiver)} == {summary["release"]}
    assert all(e["report"].endswith("report.html") for e in events(receiver))
    log = [json.loads(line) for line in (folder / gates.NOTIFICATION_LOG).read_text()
           .splitlines()]
    assert all(entry["ok"] for entry in log) and SECRET not in json.dumps(log)
    report = (folder / "report.html").read_text()
    assert "APPROVED" in report and actor in report and "notifications" in report.lower()


@pytest.mark.lab
def test_a_rejection_rolls_the_release_back(tmp_path, lab_now):  # noqa: F811
    with running_receiver() as receiver:
        path = gate_plan(tmp_path, lab_now, receiver)
        env = run_env(receiver)
        assert cli(tmp_path, env, "step", str(path)).returncode == 0  # preflight
        assert cli(tmp_path, env, "step", str(path)).returncode == 0  # shift-25
        assert cli(tmp_path, env, "step", str(path)).returncode == 0  # waiting
        assert waiting_at_gate(lab_now)
        refused = cli(tmp_path, env, "approve", str(path), "--reject")
        assert refused.returncode == 0, refused.stdout + refused.stderr
        cli(tmp_path, env, "step", str(path))  # the gate closes: rollback is due
        cli(tmp_path, env, "step", str(path))  # rollback
        summary = release(tmp_path)
    assert summary["status"] == "rolled-back", summary
    assert "rejected by" in summary["reason"]
    assert [p["verdict"] for p in summary["phases"] if p["name"] == "approve"] == ["REJECTED"]
    assert all_on_stable(lab_now)


@pytest.mark.lab
def test_an_approval_that_never_comes_rolls_back_at_the_timeout_or_keeps_holding(
        tmp_path, lab_now):  # noqa: F811
    with running_receiver() as receiver:
        steps = [*NO_ANALYSIS, {"approve": {"timeout": "3s", "check_every": "1s"}}]
        path = gate_plan(tmp_path, lab_now, receiver, steps=steps)
        done = cli(tmp_path, run_env(receiver), "run", str(path))
    assert done.returncode == 1, done.stdout + done.stderr
    summary = release(tmp_path)
    assert summary["status"] == "rolled-back" and "no approval within 3s" in summary["reason"]
    assert [p["verdict"] for p in summary["phases"] if p["name"] == "approve"] == ["TIMEOUT"]
    assert all_on_stable(lab_now)
    assert kinds(receiver).count("waiting") == 1  # said once, not at every look

    holding = tmp_path / "holding"
    holding.mkdir()
    lab.reset(lab_now)
    with running_receiver() as receiver:
        steps = [*NO_ANALYSIS, {"approve": {"timeout": "1s", "check_every": "1s",
                                            "on_timeout": "hold"}}]
        path = gate_plan(holding, lab_now, receiver, steps=steps)
        env = run_env(receiver)
        for _ in range(3):
            cli(holding, env, "step", str(path))
        time.sleep(2)
        cli(holding, env, "step", str(path))  # past the timeout: still waiting
        assert waiting_at_gate(lab_now)
        assert json.loads(next((holding / "reports" / "reviews").iterdir())
                          .joinpath("release.json").read_text())["status"] == "in-progress"
        # no `abort` to clean up: the next test's `lab_now` resets the lab and deletes the lease


@pytest.mark.lab
def test_a_kubectl_annotation_naming_the_release_opens_the_gate(tmp_path, lab_now):  # noqa: F811
    with running_receiver() as receiver:
        path = gate_plan(tmp_path, lab_now, receiver)
        env = run_env(receiver)
        for _ in range(3):
            cli(tmp_path, env, "step", str(path))
        name = release(tmp_path)["release"]
        vs = cluster.find_virtual_service(kube(lab_now), lab_now.service)["metadata"]["name"]
        cluster.annotate(kube(lab_now), "VirtualService", vs, {"metadata": {"annotations": {
            gates.APPROVE_ANNOTATION: "some-older-release"}}})
        time.sleep(1.1)  # the next look is due
        cli(tmp_path, env, "step", str(path))
        assert waiting_at_gate(lab_now)  # a stale approval does not open it
        cluster.annotate(kube(lab_now), "VirtualService", vs, {"metadata": {"annotations": {
            gates.APPROVE_ANNOTATION: name, gates.APPROVER_ANNOTATION: "chatops-bot"}}})
        time.sleep(1.1)
        cli(tmp_path, env, "step", str(path))  # opens
        cli(tmp_path, env, "step", str(path))  # promote
        summary = release(tmp_path)
    assert summary["status"] == "promoted"
    gate = next(p for p in summary["phases"] if p["name"] == "approve")
    assert gate["approval"]["by"] == "chatops-bot"
    assert "annotation canarykit.io/approve" in gate["approval"]["how"]


@pytest.mark.lab
def test_a_refused_pre_rollout_webhook_stops_the_release_before_any_traffic_moves(
        tmp_path, lab_now):  # noqa: F811
    with running_receiver() as receiver:
        receiver.answer(503)
        path = write_plan(tmp_path, lab_now, steps=NO_ANALYSIS, webhooks=[
            {"kind": "pre-rollout", "url_env": "TEST_HOOK_URL", "name": "loadtest",
             "metadata": {"cmd": "hey -z 1m"}}])
        done = cli(tmp_path, {**environment(), "TEST_HOOK_URL": receiver.url("/pre")},
                   "run", str(path))
        body = receiver.requests[0].json()
    assert done.returncode == 1, done.stdout + done.stderr
    summary = release(tmp_path)
    assert summary["status"] == "failed" and "answered 503" in summary["reason"]
    assert [(p["name"], p["verdict"]) for p in summary["phases"]] == [
        ("pre-rollout-webhooks", "REFUSED")]
    assert body["kind"] == "pre-rollout" and body["metadata"] == {"cmd": "hey -z 1m"}
    assert body["release"] == summary["release"] and body["service"] == lab_now.service
    assert audit.read_records(release_folder(tmp_path) / "audit.jsonl") == []


@pytest.mark.lab
def test_pre_step_confirm_promotion_and_post_rollout_webhooks(tmp_path, lab_now):  # noqa: F811
    with running_receiver() as receiver:
        hooks = [{"kind": kind, "url_env": "TEST_HOOK_URL", "name": kind}
                 for kind in ("pre-step", "confirm-promotion", "post-rollout")]
        path = write_plan(tmp_path, lab_now, steps=NO_ANALYSIS, webhooks=hooks, pause="1s")
        receiver.answer(200, 503)  # pre-step says go, the first confirmation says not yet
        done = cli(tmp_path, {**environment(), "TEST_HOOK_URL": receiver.url("/hook")},
                   "run", str(path))
        bodies = [r.json() for r in receiver.requests]
    assert done.returncode == 0, done.stdout + done.stderr
    assert [b["kind"] for b in bodies] == ["pre-step", "confirm-promotion", "confirm-promotion",
                                          "post-rollout"]
    assert bodies[0]["phase"] == "shift-25"
    assert bodies[-1]["status"] == "promoted"
    summary = release(tmp_path)
    assert [(p["name"], p["verdict"]) for p in summary["phases"]][-2:] == [
        ("confirm-promotion", "CONFIRMED"), ("promote", None)]
    assert [(h["kind"], h["ok"]) for h in summary["webhooks"]] == [
        ("pre-step", True), ("confirm-promotion", False), ("confirm-promotion", True),
        ("post-rollout", True)]


@pytest.mark.lab
def test_a_refused_pre_step_webhook_holds_the_step_then_rolls_back(tmp_path, lab_now):  # noqa: F811
    with running_receiver() as receiver:
        receiver.answer(*[500] * 10)
        path = write_plan(tmp_path, lab_now, steps=NO_ANALYSIS, webhooks=[
            {"kind": "pre-step", "url_env": "TEST_HOOK_URL"}])
        done = cli(tmp_path, {**environment(), "TEST_HOOK_URL": receiver.url("/hook")},
                   "run", str(path))
    assert done.returncode == 1, done.stdout + done.stderr
    summary = release(tmp_path)
    assert summary["status"] == "rolled-back" and "answered 500" in summary["reason"]
    assert [p["name"] for p in summary["phases"]] == [
        "preflight", "pre-step-webhooks", "pre-step-webhooks", "rollback"]  # hold_steps 1
    assert all_on_stable(lab_now)


# A hanging channel not delaying the rollback of a bad canary is asserted on the driver tests'
# rollout of one (test_driver.py::test_run_rolls_back_a_canary_that_turned_bad_at_once_...).


@pytest.mark.lab
def test_a_phase_executed_again_after_a_crash_does_not_announce_twice(tmp_path, lab_now):  # noqa: F811
    with running_receiver() as receiver:
        path = gate_plan(tmp_path, lab_now, receiver,
                         steps=[{"weight": 25, "analysis": False}, {"promote": {}}])
        env = run_env(receiver)
        cli(tmp_path, env, "step", str(path))  # preflight: its decision is announced
        receiver.wait_for(2)
        lease = rollout.read_lease(kube(lab_now), lab_now.service)
        state = rollout.lease_state(lease)
        # as if the runner was killed after announcing, before recording the phase as done
        state.cursor, state.next_due = 0, rollout.stamp()
        state.current = {**state.current, "status": "running"}
        state.phases[-1]["outcome"] = None
        rollout.Lease(__import__("kubernetes").client.CoordinationV1Api(kube(lab_now).api),
                      lab_now.namespace, lease, "someone-else", 1).write(state, hold=False)
        again = cli(tmp_path, env, "step", str(path))
        assert "interrupted" in again.stdout, again.stdout
        time.sleep(1)
        announced = [(e["kind"], e["phase"]) for e in events(receiver)]
        # no `abort` to clean up: the next test's `lab_now` resets the lab and deletes the lease
    assert announced.count(("step", "preflight")) == 1, announced
    assert announced.count(("started", "")) == 1


@pytest.mark.lab
def test_run_mode_rolls_back_when_the_approval_is_rejected(tmp_path, lab_now):  # noqa: F811
    with running_receiver() as receiver:
        path = gate_plan(tmp_path, lab_now, receiver)
        returncode, output = answered_at_gate(tmp_path, lab_now, receiver, path, "--reject")
    assert returncode == 1, output
    summary = release(tmp_path)
    assert summary["status"] == "rolled-back" and "rejected by" in summary["reason"]
    assert all_on_stable(lab_now)


@pytest.mark.lab
def test_step_mode_rolls_back_when_no_approval_comes_in_time(tmp_path, lab_now):  # noqa: F811
    with running_receiver() as receiver:
        steps = [*NO_ANALYSIS, {"approve": {"timeout": "2s", "check_every": "1s"}}]
        path = gate_plan(tmp_path, lab_now, receiver, steps=steps)
        env = run_env(receiver)
        for _ in range(3):  # preflight, shift-25, the gate starts waiting
            cli(tmp_path, env, "step", str(path))
        assert waiting_at_gate(lab_now)
        time.sleep(2.5)
        cli(tmp_path, env, "step", str(path))  # past the timeout: rollback is due
        cli(tmp_path, env, "step", str(path))  # rollback
    summary = release(tmp_path)
    assert summary["status"] == "rolled-back" and "no approval within 2s" in summary["reason"]
    assert [p["verdict"] for p in summary["phases"] if p["name"] == "approve"] == ["TIMEOUT"]
    assert all_on_stable(lab_now)
