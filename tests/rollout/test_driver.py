"""The rollout driver against the lab: `rollout run`, `step` (lease, crash safety), `abort`.

Every rollout runs the real runbooks through papermill, as `python -m canarykit.rollout.driver`
subprocesses, against the session's lab (`shared_lab`, tests/lab_fixture.py) with its load
generator at 100 requests/s for the module.
Windows are small so the module stays within a few minutes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from canarykit.cluster import audit
from canarykit.cluster import client as cluster
from canarykit.cluster import state as rollout_state
from canarykit.lab import processes as lab
from canarykit.rollout import driver as rollout
from canarykit.rollout import plan
from canarykit.rollout.target import PROMETHEUS_URL_ENV
from tests.lab_fixture import kube, request_counts, wait_until
from tests.notify.receiver import running_receiver

pytestmark = pytest.mark.lab  # the driver's papermill kernels against a running lab

LEASE_SECONDS = 3  # a killed runner's lease expires quickly
ANALYSIS = {"window": "6s", "interval": "2s", "check_every": "2s", "max_duration": "30s",
            "min_requests": 20}


# ---------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def loaded_lab(shared_lab):
    """The session's lab with steady load for the module, once the stable version has a fresh
    baseline in Prometheus (300 more requests than when the load started)."""
    lab.reset(shared_lab)
    before = request_counts(shared_lab, time.time()).get(("v1",), 0)
    lab.set_rate(shared_lab, 100)
    wait_until(lambda: request_counts(shared_lab, time.time()).get(("v1",), 0) > before + 300,
               "a baseline of requests to v1", timeout=60)
    yield shared_lab
    lab.set_rate(shared_lab, 0)


@pytest.fixture
def lab_now(loaded_lab):
    """The loaded lab back at the seed: all traffic on v1, no rollout, no driver lease."""
    lab.reset(loaded_lab)
    lab.set_rate(loaded_lab, 100)  # reset restarts the load generator's counts only
    kube_client = kube(loaded_lab)
    try:
        client.CoordinationV1Api(kube_client.api).delete_namespaced_lease(
            rollout.lease_name(loaded_lab.service), loaded_lab.namespace)
    except client.exceptions.ApiException as exc:
        assert exc.status == 404
    return loaded_lab


def write_plan(tmp_path: Path, state, **changes) -> Path:
    data = {
        "service": state.service,
        "namespace": state.namespace,
        "kubeconfig": state.kubeconfig,
        "prometheus": {"url": state.prometheus_url},
        "reports": str(tmp_path / "reports"),
        "preflight": {"baseline_window": "10s"},
        "inconclusive": {"hold_steps": 1},
        "analysis": dict(ANALYSIS),
        "steps": [{"weight": 25}, {"promote": {}}],
    }
    data.update(changes)
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "canarykit.rollout.driver", *args,
            "--lease-seconds", str(LEASE_SECONDS)]


def environment() -> dict[str, str]:
    """Ours without the defaults a plan may fall back to: the plans name what they use."""
    dropped = ("KUBECONFIG", PROMETHEUS_URL_ENV)
    return {k: v for k, v in os.environ.items() if k not in dropped}


def rollout_cli(tmp_path: Path, *args: str, timeout: float = 240,
                env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(command(*args), cwd=tmp_path, env=environment() if env is None else env,
                          capture_output=True, text=True, timeout=timeout)


def start_rollout(tmp_path: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(command(*args), cwd=tmp_path, env=environment(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def release_folder(tmp_path: Path) -> Path:
    folders = sorted((tmp_path / "reports" / "reviews").iterdir())
    assert len(folders) == 1, folders
    return folders[0]


def release(tmp_path: Path) -> dict:
    return json.loads((release_folder(tmp_path) / "release.json").read_text())


def weights_in_audit(folder: Path) -> list[int]:
    return [r["params"]["canary_weight"] for r in audit.read_records(folder / "audit.jsonl")
            if r["operation"] == "set_canary_weight"]


def routes(state) -> list[cluster.RouteStatus]:
    return cluster.status(kube(state), state.service).routes


def all_on_stable(state) -> bool:
    vs = cluster.find_virtual_service(kube(state), state.service)
    split = {d.subset: d.weight for d in routes(state)[0].destinations}
    return split == {"v1": 100, "v2": 0} and rollout_state.read_state(vs) is None


def driver_state(state) -> rollout.DriverState | None:
    return rollout.lease_state(rollout.read_lease(kube(state), state.service))


def chain_intact(folder: Path, state) -> bool:
    vs = cluster.find_virtual_service(kube(state), state.service)
    head = (vs["metadata"].get("annotations") or {}).get(rollout_state.AUDIT_HEAD_ANNOTATION)
    return audit.verify_chain(folder / "audit.jsonl", {head} if head else None).ok


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2:].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def kill_hard(process: subprocess.Popen) -> None:
    """SIGKILL the runner, as a crash would; its orphaned kernel exits on its own (ipykernel
    polls its parent), which we wait for so the next runner starts on a quiet cluster."""
    kernels = children(process.pid)
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=10)
    deadline = time.monotonic() + 20
    while any(Path(f"/proc/{pid}").exists() for pid in kernels):
        if time.monotonic() > deadline:
            for pid in kernels:
                if Path(f"/proc/{pid}").exists():
                    os.kill(pid, signal.SIGKILL)
            break
        time.sleep(0.1)


def wait_for_lease_to_expire(state) -> None:
    lease = rollout.read_lease(kube(state), state.service)
    wait_until(lambda: rollout.lease_expired(lease), "the killed runner's lease to expire",
               timeout=LEASE_SECONDS + 10, every=0.2)


# ---------------------------------------------------------------- against the lab


def test_run_of_a_healthy_canary_ends_promoted_with_a_report(tmp_path, lab_now):
    done = rollout_cli(tmp_path, "run", str(write_plan(tmp_path, lab_now)))
    assert done.returncode == 0, done.stdout + done.stderr
    folder = release_folder(tmp_path)
    summary = release(tmp_path)
    assert summary["status"] == "promoted" and summary["finished"]
    assert [(p["name"], p["outcome"], p["verdict"]) for p in summary["phases"]] == [
        ("preflight", "ok", "PASS"), ("shift-25", "ok", None), ("analyze-25", "ok", "PASS"),
        ("promote", "ok", None)]
    assert [p["notebook"] for p in summary["phases"]] == [
        "01-preflight.ipynb", "02-shift-25.ipynb", "03-analyze-25.ipynb", "04-promote.ipynb"]
    assert all((folder / p["notebook"]).is_file() for p in summary["phases"])
    assert f"report: {folder / 'report.html'}" in done.stdout.splitlines()
    assert (folder / "report.html").stat().st_size > 0
    assert plan.load_plan(folder / "plan.yaml").steps[0].settings == {"weight": 25}
    served = {d.subset for d in routes(lab_now)[0].destinations if d.weight != 0}
    assert served == {"v2"}
    assert weights_in_audit(folder) == [25]
    assert chain_intact(folder, lab_now)
    assert driver_state(lab_now).status == "promoted"
    assert not rollout.read_lease(kube(lab_now), "reviews")["spec"].get("holderIdentity")


def test_run_rolls_back_a_canary_that_turned_bad_at_once_even_with_a_hanging_channel(
        tmp_path, lab_now):
    """One rollout of a bad canary for two tests that ran the same one: the driver rolls it
    back, and a chat channel that never answers does not delay the rollback."""
    lab.set_behaviour(lab_now, "v2", error_rate=0.5, latency_median_ms=300.0)
    with running_receiver() as receiver:
        receiver.hang(30)
        path = write_plan(tmp_path, lab_now, notifications=[
            {"kind": "slack", "url_env": "TEST_SLACK_URL", "name": "slow-slack"}])
        started = time.monotonic()
        done = rollout_cli(tmp_path, "run", str(path),
                           env={**environment(), "TEST_SLACK_URL": receiver.url("/slack")})
        took = time.monotonic() - started
    assert done.returncode == 1, done.stdout + done.stderr
    summary = release(tmp_path)
    assert summary["status"] == "rolled-back"
    assert [(p["name"], p["verdict"]) for p in summary["phases"]] == [
        ("preflight", "PASS"), ("shift-25", None), ("analyze-25", "FAIL"), ("rollback", None)]
    assert "analyze-25: FAIL" in summary["reason"]
    assert all_on_stable(lab_now)
    assert (release_folder(tmp_path) / "report.html").is_file()
    assert chain_intact(release_folder(tmp_path), lab_now)
    # the hanging channel (formerly test_gates.py::test_a_hanging_channel_does_not_delay_...)
    failed, rollback = summary["phases"][-2], summary["phases"][-1]
    assert failed["verdict"] == "FAIL" and rollback["name"] == "rollback"
    gap = (rollout.parse_stamp(rollback["started"])
           - rollout.parse_stamp(failed["finished"])).total_seconds()
    assert gap < 2.0, gap  # the rollback started at once, the messages were still hanging
    assert took < 5 * 30  # the command waited a bounded time for them at the end
    assert "not delivered" in done.stdout


def test_inconclusive_analysis_is_held_then_rolled_back_never_promoted(tmp_path, lab_now):
    starved = {**ANALYSIS, "min_requests": 1_000_000, "max_duration": "6s"}
    done = rollout_cli(tmp_path, "run", str(write_plan(tmp_path, lab_now, analysis=starved)))
    assert done.returncode == 1, done.stdout + done.stderr
    summary = release(tmp_path)
    assert [(p["name"], p["verdict"]) for p in summary["phases"]] == [
        ("preflight", "PASS"), ("shift-25", None), ("analyze-25", "INCONCLUSIVE"),
        ("analyze-25-hold-1", "INCONCLUSIVE"), ("rollback", None)]
    assert summary["status"] == "rolled-back" and "INCONCLUSIVE 2 times" in summary["reason"]
    assert all_on_stable(lab_now)


def test_step_executes_one_due_phase_at_a_time_until_the_release_is_over(tmp_path, lab_now):
    path = write_plan(tmp_path, lab_now)
    counts = []
    for _ in range(8):
        done = rollout_cli(tmp_path, "step", str(path))
        assert done.returncode == 0, done.stdout + done.stderr
        counts.append(len(release(tmp_path)["phases"]))
        if release(tmp_path)["status"] != "in-progress":
            break
    assert counts == [1, 2, 3, 4]  # exactly one phase per run
    assert release(tmp_path)["status"] == "promoted"
    again = rollout_cli(tmp_path, "step", str(path))
    assert again.returncode == 0 and "promoted" in again.stdout
    assert len(release(tmp_path)["phases"]) == 4  # an ended release is not started again
    status = rollout_cli(tmp_path, "status", str(path), "--output", "json")
    report = json.loads(status.stdout)
    assert report["release"]["status"] == "promoted" and report["release"]["next"] is None
    assert report["cluster"]["routes"][0]["destinations"] == [{"subset": "v2", "weight": None}]


def test_step_waits_for_the_pause_and_two_runners_at_once_act_only_once(tmp_path, lab_now):
    path = write_plan(tmp_path, lab_now, pause="1h")
    runners = [start_rollout(tmp_path, "step", str(path)) for _ in range(2)]
    outputs = [runner.communicate(timeout=120)[0] for runner in runners]
    assert [runner.returncode for runner in runners] == [0, 0], outputs
    assert [p["name"] for p in release(tmp_path)["phases"]] == ["preflight"]
    acted = [o for o in outputs if "preflight" in o and "PASS" in o]
    idle = [o for o in outputs if "holds lease" in o or "nothing to do" in o]
    assert len(acted) == 1 and len(idle) == 1, outputs
    later = rollout_cli(tmp_path, "step", str(path))
    assert "is due at" in later.stdout
    assert len(release(tmp_path)["phases"]) == 1


def test_abort_rolls_back_now_and_ends_the_release_aborted(tmp_path, lab_now):
    path = write_plan(tmp_path, lab_now)
    for _ in range(2):
        assert rollout_cli(tmp_path, "step", str(path)).returncode == 0
    assert weights_in_audit(release_folder(tmp_path)) == [25]
    done = rollout_cli(tmp_path, "abort", str(path))
    assert done.returncode == 0, done.stdout + done.stderr
    summary = release(tmp_path)
    assert summary["status"] == "aborted" and summary["phases"][-1]["name"] == "rollback"
    assert all_on_stable(lab_now)


def test_promote_skips_the_remaining_steps_and_makes_the_canary_stable(tmp_path, lab_now):
    path = write_plan(tmp_path, lab_now, steps=[{"weight": 25}, {"weight": 50},
                                                {"promote": {}}])
    for _ in range(2):
        assert rollout_cli(tmp_path, "step", str(path)).returncode == 0
    done = rollout_cli(tmp_path, "promote", str(path))
    assert done.returncode == 0, done.stdout + done.stderr
    summary = release(tmp_path)
    assert summary["status"] == "promoted"
    assert [p["name"] for p in summary["phases"]] == ["preflight", "shift-25", "promote"]
    assert weights_in_audit(release_folder(tmp_path)) == [25]  # 50 % was never applied
    served = {d.subset for d in routes(lab_now)[0].destinations if d.weight != 0}
    assert served == {"v2"}
    assert rollout_state.read_state(cluster.find_virtual_service(kube(lab_now), "reviews")) is None
    again = rollout_cli(tmp_path, "promote", str(path))
    assert again.returncode == 1 and "nothing to promote" in again.stdout
    assert chain_intact(release_folder(tmp_path), lab_now)


def test_a_runner_killed_at_any_point_of_a_phase_is_continued_by_the_next(tmp_path, lab_now):
    path = write_plan(tmp_path, lab_now, steps=[{"weight": 25}, {"weight": 50},
                                                {"promote": {}}])
    assert rollout_cli(tmp_path, "step", str(path)).returncode == 0  # preflight
    folder = release_folder(tmp_path)

    def running(name: str):
        current = (driver_state(lab_now) or rollout.DriverState("", "", "", "")).current or {}
        return current.get("status") == "running" and current.get("name") == name

    def recover(name: str) -> None:
        wait_for_lease_to_expire(lab_now)
        done = rollout_cli(tmp_path, "step", str(path))
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"phase {name} was interrupted" in done.stdout
        assert driver_state(lab_now).current["status"] == "done"

    # 1. before the notebook starts: the phase is marked running, nothing applied yet
    runner = start_rollout(tmp_path, "step", str(path))
    wait_until(lambda: running("shift-25"), "shift-25 to be marked running", every=0.01)
    kill_hard(runner)
    assert weights_in_audit(folder) == []
    recover("shift-25")
    assert weights_in_audit(folder) == [25]

    # 2. during the notebook's execution (the analysis is under way)
    runner = start_rollout(tmp_path, "step", str(path))
    wait_until(lambda: running("analyze-25") and list(folder.glob("*-analyze-25.ipynb")),
               "analyze-25 to be executing", timeout=30, every=0.05)
    time.sleep(3)  # well into the notebook: the kernel is judging the canary
    kill_hard(runner)
    recover("analyze-25")
    assert [p["verdict"] for p in release(tmp_path)["phases"] if p["name"] == "analyze-25"] \
        == [None, "PASS"]

    # 3. after the change is applied, before its completion is recorded
    runner = start_rollout(tmp_path, "step", str(path))
    wait_until(lambda: weights_in_audit(folder) == [25, 50], "the weight 50 to be applied",
               timeout=60, every=0.01)
    kill_hard(runner)
    assert running("shift-50")  # the completion was never recorded
    recover("shift-50")
    assert weights_in_audit(folder) == [25, 50]  # the re-execution changed nothing

    for _ in range(4):
        if release(tmp_path)["status"] != "in-progress":
            break
        assert rollout_cli(tmp_path, "step", str(path)).returncode == 0
    summary = release(tmp_path)
    assert summary["status"] == "promoted"
    names = [(p["name"], p["outcome"]) for p in summary["phases"]]
    assert names == [
        ("preflight", "ok"), ("shift-25", "error"), ("shift-25", "ok"),
        ("analyze-25", "error"), ("analyze-25", "ok"), ("shift-50", "error"),
        ("shift-50", "ok"), ("analyze-50", "ok"), ("promote", "ok")]
    interrupted = [p for p in summary["phases"] if p["outcome"] == "error"]
    assert all(p["error"].startswith("interrupted") for p in interrupted)
    assert weights_in_audit(folder) == [25, 50]  # each weight change applied once
    operations = [r["operation"] for r in audit.read_records(folder / "audit.jsonl")]
    assert operations.count("begin_rollout") == 1 and operations.count("promote") == 1
    assert chain_intact(folder, lab_now)
