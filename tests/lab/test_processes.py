"""The lab end to end: canarykit changes Istio objects, a real Envoy routes, Prometheus counts.

Most tests share one lab (tests/lab_fixture.py), put back to the seed before each. Shares are
checked against binomial tolerance (4 sigma); counts against Prometheus exactly.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from canarykit.cluster import client as cluster
from canarykit.core.errors import BadInput
from canarykit.lab import envoy_config
from canarykit.lab import processes as lab
from canarykit.lab.envoy_config import Translation
from canarykit.lab.processes import LabConfig, LabError, VersionSettings
from canarykit.mesh import traffic
from canarykit.mesh.istio import ISTIO_GROUP
from canarykit.rollout.target import PROMETHEUS_URL_ENV
from tests import lab_fixture
from tests.lab_fixture import FAST, burst, counted, envoy_stats, kube, wait_until, within

pytestmark = pytest.mark.lab  # the lab's processes

lab_state = lab_fixture.lab_state  # fixture: one lab for the module
fresh_lab = lab_fixture.fresh_lab  # fixture: that lab back to the seed

V1_CLUSTER = "outbound|9080|v1|reviews.default.svc.cluster.local"


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """`python -m ARGS` from `cwd`, as a user would run it there (the installed canarykit)."""
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=180)


def change_vs(state, operation, tmp_path):
    return cluster.change_virtual_service(kube(state), state.service, operation,
                                          audit_log=tmp_path / "audit.jsonl")


def set_weight(state, canary: int, tmp_path):
    return cluster.set_weight(kube(state), state.service, canary,
                              audit_log=tmp_path / "audit.jsonl")


# ---------------------------------------------------------------- routing


def test_canarykit_weight_25_sends_a_quarter_to_v2_by_client_counts_and_prometheus(
        fresh_lab, tmp_path):
    done = run_cli("canarykit", "weight", "reviews", "--canary", "25", "--kubeconfig",
                   fresh_lab.kubeconfig, "--audit-log", str(tmp_path / "audit.jsonl"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lab.wait_for_routing(fresh_lab)
    n = 1000
    stats, by_version, _ = counted(fresh_lab, lambda: burst(fresh_lab, n))
    assert stats.sent == n and stats.by_status == {"200": n}
    assert within(stats.by_version["v2"], n, 0.25), stats.by_version
    assert within(by_version[("v2",)], n, 0.25), by_version
    assert by_version[("v1",)] + by_version[("v2",)] == n

    set_weight(fresh_lab, 75, tmp_path)
    lab.wait_for_routing(fresh_lab, timeout=10)  # "within a few seconds"
    stats = burst(fresh_lab, 400)
    assert within(stats.by_version["v2"], 400, 0.75), stats.by_version


def test_header_and_cookie_routes_reach_only_the_canary(fresh_lab, tmp_path):
    change_vs(fresh_lab, lambda vs: traffic.add_match_route(
        vs, name="canary-users", header="x-canary-user", value="true"), tmp_path)
    change_vs(fresh_lab, lambda vs: traffic.add_match_route(
        vs, name="beta-cookie", cookie_regex=traffic.cookie_regex("beta", "true")), tmp_path)
    lab.wait_for_routing(fresh_lab)
    assert burst(fresh_lab, 100, kind="header").by_version == {"v2": 100}
    assert burst(fresh_lab, 100, kind="cookie").by_version == {"v2": 100}
    assert burst(fresh_lab, 100, kind="plain").by_version == {"v1": 100}
    assert burst(fresh_lab, 50, headers={"Cookie": "beta=false"}).by_version == {"v1": 50}


def test_mirror_at_50_percent_gives_v2_half_of_v1s_requests_while_clients_see_only_v1(
        fresh_lab, tmp_path):
    change_vs(fresh_lab, lambda vs: traffic.set_mirror(vs, percentage=50), tmp_path)
    lab.wait_for_routing(fresh_lab)
    n = 1000
    stats, by_version, _ = counted(fresh_lab, lambda: burst(fresh_lab, n), settle=1.0)
    assert stats.by_version == {"v1": n} and stats.by_status == {"200": n}
    assert by_version[("v1",)] == n
    assert within(by_version[("v2",)], n, 0.5), by_version


def policy_cli(state, tmp_path, *args: str) -> None:
    """`canarykit policy` on the lab's service, as a user would type it."""
    done = run_cli("canarykit", "policy", state.service, "--kubeconfig", state.kubeconfig,
                   "--audit-log", str(tmp_path / "audit.jsonl"), *args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lab.wait_for_routing(state)


def test_the_seeds_fault_injection_shows_in_client_latency_and_status_codes(fresh_lab,
                                                                             tmp_path):
    """500 ms on 10 % and HTTP 500 on 5 %, set by `canarykit policy`: the shares the clients
    see are within 4 binomial sigmas."""
    policy_cli(fresh_lab, tmp_path, "--fault-delay", "500ms", "--fault-delay-percent", "10",
               "--fault-abort", "500", "--fault-abort-percent", "5")
    n = 600
    stats = burst(fresh_lab, n, concurrency=32)
    aborted = stats.by_version_status.get("none", {}).get("500", 0)
    assert within(aborted, n, 0.05), stats.by_version_status
    assert stats.by_status.get("200", 0) + aborted == n
    delayed = sum(1 for ms in stats.latencies_ms if ms >= 500)
    assert within(delayed, n, 0.10), sorted(stats.latencies_ms)[::60]


def test_timeout_cuts_slow_canary_responses_and_lets_fast_ones_through(fresh_lab, tmp_path):
    lab.set_behaviour(fresh_lab, "v2", latency_median_ms=400, latency_sigma=0.05)
    set_weight(fresh_lab, 100, tmp_path)
    change_vs(fresh_lab, lambda vs: traffic.set_timeout_and_retries(vs, timeout="100ms"),
              tmp_path)
    lab.wait_for_routing(fresh_lab)
    cut = burst(fresh_lab, 40)
    assert cut.by_status == {"504": 40} and cut.by_version == {"none": 40}

    change_vs(fresh_lab, lambda vs: traffic.set_timeout_and_retries(vs, timeout="3s"),
              tmp_path)
    lab.wait_for_routing(fresh_lab)
    slow = burst(fresh_lab, 16)
    assert slow.by_status == {"200": 16} and slow.by_version == {"v2": 16}


def test_retries_turn_a_flaky_canarys_503s_into_successes_and_each_retry_is_a_request(
        fresh_lab, tmp_path):
    lab.set_behaviour(fresh_lab, "v2", error_rate=0.5, error_status=503)
    set_weight(fresh_lab, 100, tmp_path)
    policy_cli(fresh_lab, tmp_path, "--retries", "0")
    n = 300
    without = burst(fresh_lab, n)
    assert within(without.by_status.get("503", 0), n, 0.5), without.by_status

    policy_cli(fresh_lab, tmp_path, "--timeout", "3s", "--retries", "5", "--per-try-timeout",
               "1s", "--retry-on", "5xx,reset,connect-failure,retriable-4xx")
    retries = f"cluster.{V1_CLUSTER.replace('|v1|', '|v2|')}.upstream_rq_retry"
    before = envoy_stats(fresh_lab, "upstream_rq_retry").get(retries, 0)
    retried, by_version, _ = counted(fresh_lab, lambda: burst(fresh_lab, n))
    # Six tries of a coin: 1.6% still fail; 4 sigma above that is under 5%.
    assert retried.by_status.get("200", 0) >= 0.95 * n, retried.by_status
    assert set(retried.by_version) <= {"v2", "none"}
    counted_retries = envoy_stats(fresh_lab, "upstream_rq_retry").get(retries, 0) - before
    # Each request tries until an answer is not a 503, at most six times: 0.97 retries each.
    assert 0.6 * n < counted_retries < 1.4 * n, counted_retries
    # ...and every retry reached the canary as a request of its own.
    assert by_version[("v2",)] == n + counted_retries, (by_version, counted_retries)


def route_whole_service(state, tmp_path):
    """Route `primary` to the service's default cluster (every replica of every version)."""
    def operation(vs):
        after = json.loads(json.dumps(vs))
        after["spec"]["http"][0]["route"] = [{"destination": {"host": state.service}}]
        return traffic.Change("route_whole_service", {}, vs, after)

    change_vs(state, operation, tmp_path)


def test_consistent_hash_on_session_id_keeps_each_session_on_one_version(fresh_lab, tmp_path):
    route_whole_service(fresh_lab, tmp_path)
    lab.wait_for_routing(fresh_lab)
    sessions, per_session = 30, 10
    spread = burst(fresh_lab, sessions * per_session, kind="session", sessions=sessions)
    assert any(len(seen) > 1 for seen in spread.sessions.values()), spread.sessions

    policy_cli(fresh_lab, tmp_path, "--affinity", "header:session-id")
    sticky = burst(fresh_lab, sessions * per_session, kind="session", sessions=sessions)
    assert len(sticky.sessions) == sessions
    assert all(len(seen) == 1 for seen in sticky.sessions.values()), sticky.sessions
    assert {v for seen in sticky.sessions.values() for v in seen} == {"v1", "v2"}


def test_outlier_detection_ejects_the_failing_replica(fresh_lab, tmp_path):
    lab.set_behaviour(fresh_lab, "v1", replica=1, error_rate=1.0)
    policy_cli(fresh_lab, tmp_path, "--retries", "0", "--stable-subset", "v1",
               "--canary-subset", "v2")
    failing = burst(fresh_lab, 100, concurrency=1)
    assert within(failing.by_status.get("503", 0), 100, 0.5), failing.by_status

    policy_cli(fresh_lab, tmp_path, "--outlier-consecutive-5xx", "3", "--outlier-interval",
               "1s", "--outlier-base-ejection", "60s", "--outlier-max-ejection-percent", "50")
    burst(fresh_lab, 30, concurrency=1)
    gauge = f"cluster.{V1_CLUSTER}.outlier_detection.ejections_active"
    wait_until(lambda: envoy_stats(fresh_lab, "ejections_active").get(gauge) == 1,
               "Envoy to eject the failing replica")
    after = burst(fresh_lab, 200)
    assert after.by_status == {"200": 200}, after.by_status


def test_prometheus_counts_per_version_and_status_match_the_load_generators_and_envoys(
        fresh_lab, tmp_path):
    lab.set_behaviour(fresh_lab, "v2", error_rate=0.2, error_status=500)
    set_weight(fresh_lab, 50, tmp_path)
    lab.wait_for_routing(fresh_lab)
    stats, counts, envoy = counted(fresh_lab, lambda: burst(
        fresh_lab, 600, mix="plain=0.7,header=0.1,cookie=0.1,session=0.1", seed=7),
        by=("destination_version", "response_code"))
    client_side = {(v, code): n for v, codes in stats.by_version_status.items()
                   for code, n in codes.items()}
    assert {k: int(v) for k, v in counts.items()} == client_side
    assert {k: int(v) for k, v in envoy.items()} == {(v,): n for v, n in stats.by_version.items()}
    assert client_side[("v2", "500")] > 0 and stats.sent == 600


def test_the_load_generator_sends_every_kind_at_its_rate_when_asked(fresh_lab, tmp_path):
    set_weight(fresh_lab, 50, tmp_path)
    lab.wait_for_routing(fresh_lab)
    lab.set_rate(fresh_lab, 200)
    try:
        wait_until(lambda: lab.load_stats(fresh_lab).sent >= 300, "300 paced requests")
    finally:
        lab.set_rate(fresh_lab, 0)
    stats = lab.load_stats(fresh_lab)
    assert set(stats.by_kind) == {"plain", "header", "cookie", "session"}
    assert set(stats.by_version) == {"v1", "v2"} and stats.by_status == {"200": stats.sent}


def test_set_behaviour_of_an_unknown_version_is_refused_naming_it(lab_state):
    with pytest.raises(BadInput, match="v9"):
        lab.set_behaviour(lab_state, "v9", error_rate=0.5)
    with pytest.raises(BadInput, match="error_rate"):
        lab.set_behaviour(lab_state, "v2", error_rate=1.5)


def test_every_config_the_control_plane_wrote_passes_envoy_validate(lab_state):
    written = sorted(Path(lab_state.history_dir).glob("*.json"))
    assert written, "the control plane kept no config"
    translations = []
    for path in written:
        data = json.loads(path.read_text())
        translations.append(Translation(data["listeners"], data["clusters"], data["problems"],
                                        data["version"]))
    # Two `envoy --mode validate` at a time (each in its own folder): the same checks, on both
    # cores; list() re-raises the first refusal.
    with ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(envoy_config.validate_with_envoy, translations))
    assert len({t.version for t in translations}) == len(written)
    rejected = envoy_stats(lab_state, "update_rejected")
    assert rejected["listener_manager.lds.update_rejected"] == 0
    assert rejected["cluster_manager.cds.update_rejected"] == 0


# ---------------------------------------------------------------- lifecycle (own labs)


def small_config(data_dir: Path, **changes) -> LabConfig:
    return LabConfig(data_dir=str(data_dir), rate=0, loadgen_concurrency=1,
                     versions={"v1": VersionSettings(**FAST), "v2": VersionSettings(**FAST)},
                     **changes)


def gone(pids: list[int]) -> list[int]:
    """The PIDs that are still running (zombies count as gone)."""
    left = []
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state not in ("Z", "X"):
            left.append(pid)
    return left


def test_lab_up_and_down_leave_no_process_and_a_second_up_is_refused(tmp_path):
    data = tmp_path / "lab"  # given relative to where `up` runs
    config_file = tmp_path / "lab.yaml"
    config_file.write_text(yaml.safe_dump({"rate": 5, "versions": {"v1": FAST, "v2": FAST}}))
    up = run_cli("canarykit.lab.processes", "up", "--config", str(config_file),
                 "--data-dir", "lab", cwd=tmp_path)
    try:
        assert up.returncode == 0, up.stderr
        status = json.loads(run_cli("canarykit.lab.processes", "status", "--data-dir", str(data),
                                    "--output", "json", cwd=tmp_path).stdout)
        assert status["healthy"] and status["kubeconfig"] in up.stdout
        assert status["prometheus_url"] in up.stdout and status["envoy_url"] in up.stdout
        told = up.stdout.splitlines()
        assert f"  export KUBECONFIG={data / 'kubeconfig'}" in told
        assert f"  export {PROMETHEUS_URL_ENV}={status['prometheus_url']}" in told
        pids = [p["pid"] for p in status["parts"]]
        assert {p["name"] for p in status["parts"]} == {
            "apiserver", "reviews-v1-0", "reviews-v2-0", "controlplane", "envoy", "prometheus",
            "loadgen"}
        vs = cluster.get_object(cluster.connect(status["kubeconfig"]), "VirtualService",
                                "reviews")
        assert vs["apiVersion"] == f"{ISTIO_GROUP}/v1"

        again = run_cli("canarykit.lab.processes", "up", "--data-dir", str(data), cwd=tmp_path)
        assert again.returncode == 1
        assert "a lab is already running" in again.stderr and "lab down" in again.stderr
        assert gone(pids) == pids
    finally:
        down = run_cli("canarykit.lab.processes", "down", "--data-dir", str(data), cwd=tmp_path)
    assert down.returncode == 0, down.stderr
    assert gone(pids) == []
    assert not (data / lab.STATE_FILE).exists()
    down = run_cli("canarykit.lab.processes", "down", "--data-dir", str(data), cwd=tmp_path)
    assert "no lab running" in down.stdout
    stopped = run_cli("canarykit.lab.processes", "status", "--data-dir", str(data), cwd=tmp_path)
    assert stopped.returncode == 1


def test_a_part_that_fails_to_start_is_named_with_its_log_and_the_rest_is_stopped(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        config = small_config(tmp_path / "lab", prometheus_port=taken.getsockname()[1])
        with pytest.raises(LabError, match="prometheus") as failure:
            lab.up(config)
    err = failure.value
    assert err.part == "prometheus" and err.log and err.log in str(err)
    assert Path(err.log).exists()
    assert [p.name for p in err.stopped][:2] == ["apiserver", "reviews-v1-0"]
    assert gone([p.pid for p in err.stopped]) == []
    assert not (tmp_path / "lab" / lab.STATE_FILE).exists()


def test_missing_prometheus_is_refused_with_how_to_install_it(tmp_path):
    config = small_config(tmp_path / "lab", prometheus=str(tmp_path / "no-prometheus"))
    with pytest.raises(LabError, match="apt-get install -y prometheus"):
        lab.up(config)
    assert lab.read_state(tmp_path / "lab") is None


@pytest.mark.parametrize("data, field", [
    ({"versions": {"v1": {"replicas": 0}, "v2": {}}}, "versions.v1.replicas"),
    ({"versions": {"v2": {}}}, "versions"),
    ({"versions": {"v1": {}, "v2": {"error_rate": 2}}}, "versions.v2.error_rate"),
    ({"rate": -1}, "rate"),
    ({"envoy_port": 70000}, "envoy_port"),
    ({"scrape_interval": "soon"}, "scrape_interval"),
    ({"colour": "blue"}, "colour"),
])
def test_bad_lab_settings_are_refused_naming_the_field(data, field):
    with pytest.raises(BadInput) as refused:
        LabConfig.from_dict(data).validate()
    assert refused.value.field == field


def test_flags_override_the_config_file(tmp_path):
    config_file = tmp_path / "lab.yaml"
    config_file.write_text(yaml.safe_dump({"rate": 5, "data_dir": "x",
                                           "versions": {"v1": {"replicas": 2}, "v2": {}}}))
    parser = __import__("argparse").ArgumentParser()
    lab.add_arguments(parser)
    args = parser.parse_args(["up", "--config", str(config_file), "--rate", "7",
                              "--replicas", "v2=3", "--error-rate", "v2=0.1"])
    cfg = lab.config_from_args(args).validate()
    assert (cfg.rate, cfg.data_dir) == (7, "x")
    assert (cfg.versions["v1"].replicas, cfg.versions["v2"].replicas) == (2, 3)
    assert cfg.versions["v2"].error_rate == 0.1
