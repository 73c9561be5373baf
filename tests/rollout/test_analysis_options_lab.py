"""A plan's analysis options reach the analyze runbook through papermill and judge real
traffic: two checks, a custom PromQL metric that decides and one that is dry-run."""

from __future__ import annotations

import time
from pathlib import Path

import papermill
import pytest

from canarykit.lab import processes as lab
from canarykit.rollout import driver, phases, plan, runbook
from canarykit.rollout import target as rollout_target

pytestmark = pytest.mark.lab

RATE = "sum(rate(istio_requests_total{ {{ selector }} }[{{ range }}]))"


@pytest.fixture
def loaded(shared_lab, monkeypatch):
    """The session's lab at the seed with steady load, found the way a runbook finds it."""
    lab.reset(shared_lab)
    lab.set_rate(shared_lab, 80)
    monkeypatch.setenv("KUBECONFIG", shared_lab.kubeconfig)
    monkeypatch.setenv(rollout_target.PROMETHEUS_URL_ENV, shared_lab.prometheus_url)
    yield shared_lab
    lab.set_rate(shared_lab, 0)


def test_a_plans_iterations_metrics_and_dry_run_judges_run_in_the_analyze_runbook(
        loaded, tmp_path: Path):
    audit_log = tmp_path / "audit.jsonl"
    loaded_plan = plan.parse_plan({
        "service": loaded.service, "namespace": loaded.namespace,
        "analysis": {"window": "6s", "interval": "2s", "min_requests": 10,
                     "judges": ["success-rate", "latency"], "dry_run_judges": ["latency"],
                     "iterations": 2, "threshold": 2,
                     "metrics": [{"name": "canary-rps", "query": RATE, "min": 1},
                                 {"name": "too-busy", "query": RATE, "max": 0.001,
                                  "dry_run": True}]},
        "steps": [{"weight": 25}]})
    spec = next(s for s in plan.expand(loaded_plan) if s.runbook == "analyze")
    target = phases.connect_target(service=loaded.service, namespace=loaded.namespace,
                                   stable="v1", canary="v2", audit_log=str(audit_log))
    phases.shift_traffic(target, runbook.new_result("shift-traffic", {}), canary_weight=25)
    time.sleep(phases.SETTLE_SECONDS)
    executed = tmp_path / "analyze.ipynb"
    papermill.execute_notebook(
        str(driver.packaged_runbooks() / "analyze.ipynb"), str(executed),
        parameters={**spec.parameters, "service": loaded.service,
                    "namespace": loaded.namespace, "audit_log": str(audit_log)},
        cwd=str(tmp_path), progress_bar=False, kernel_name="python3")
    result = runbook.read_result(executed)
    assert result is not None and result.outcome == "ok", result
    decision = result.decision
    assert decision["verdict"] == "PASS", decision["reason"]
    assert decision["reason"].startswith("0 of 2 checks failed (threshold 2, 2 iterations)")
    judged = {j["judge"]: j for j in decision["judgements"]}
    assert judged["metric:canary-rps"]["verdict"] == "PASS"
    assert judged["metric:too-busy"]["verdict"] == "FAIL" and judged["metric:too-busy"]["dry_run"]
    assert judged["latency-p99"]["dry_run"]
    iterations = result.evidence["iterations"]
    assert [i["iteration"] for i in iterations] == [1, 2]
    assert iterations[0]["end"] == iterations[1]["start"]
    assert all(c["metrics"]["metric:canary-rps"] > 1 for c in result.evidence["checks"])
    charted = {row["metric"] for row in result.metrics if row["metric"].startswith("metric:")}
    assert charted == {"metric:canary-rps", "metric:too-busy"}
