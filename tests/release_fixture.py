"""A realistic synthetic release folder, written without a lab, for the report tests.

The story: `reviews` v2 goes through preflight, an internal canary, 5% (the first attempt
at the shift dies with an error and is retried), an analysis at 5% that passes, 25%, an
analysis at 25% that FAILs because v2 turns bad (5xx and latency), and a rollback. The
notebooks look executed by papermill: a `parameters` cell, an `injected-parameters` cell,
and the result displayed under `runbook.RESULT_MIME` (or an error output for the phase that
died). Metrics are tidy rows at 10 s resolution over about 10 minutes for v1 and v2. Hostile
markup sits in a parameter, a note, the release and decision reasons, judge reasons and the
error of the phase that died, to prove the report shows it as text.
"""

from __future__ import annotations

import difflib
import json
import math
import random
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nbformat
import yaml

from canarykit.cluster import audit
from canarykit.rollout import runbook

HOSTILE = "<script>alert(1)</script>"
HOSTILE_IMG = '<img src=x onerror="alert(2)">'
SERVICE, NAMESPACE, RELEASE = "reviews", "shop", "reviews-20240501-1200"
STABLE, CANARY = "v1", "v2"
T0 = 1_714_564_800  # 2024-05-01T12:00:00Z
RESOLUTION = 10  # seconds between metric rows
V2_TURNS_BAD = 400  # seconds after T0
ACTOR, RUNNER = "canarykit-admin", "ci-runner-1:4242"


def append_record(path: Path, entry: dict[str, Any]) -> dict[str, Any]:
    """Append `entry` to the audit chain in `path` as canarykit does for a change."""
    with audit.locked_log(path) as log:
        record = log.prepare(entry)
        log.write(record)
    return record


def iso(offset: float) -> str:
    """The time `offset` seconds after T0, as the runbooks write it."""
    moment = datetime.fromtimestamp(T0 + offset, UTC)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


# ---------------------------------------------------------------- Istio objects and changes


def _virtual_service(weights: dict[str, int], header_route: bool) -> dict[str, Any]:
    http = []
    if header_route:
        http.append({
            "name": "canarykit-internal",
            "match": [{"headers": {"x-canary": {"exact": "true"}}}],
            "route": [{"destination": {"host": SERVICE, "subset": CANARY}}],
        })
    http.append({
        "name": "primary",
        "route": [
            {"destination": {"host": SERVICE, "subset": version}, "weight": weight}
            for version, weight in weights.items()
        ],
    })
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": SERVICE, "namespace": NAMESPACE},
        "spec": {"hosts": [SERVICE], "http": http},
    }


def _change(audit_log: Path, offset: float, operation: str, params: dict, before: dict,
            after: dict, resource_version: int) -> dict[str, Any]:
    """An AppliedChange.to_dict() lookalike, with its record appended to the audit chain."""
    ref = f"VirtualService {NAMESPACE}/{SERVICE}"
    diff = "".join(difflib.unified_diff(
        yaml.safe_dump(before, sort_keys=False).splitlines(keepends=True),
        yaml.safe_dump(after, sort_keys=False).splitlines(keepends=True),
        f"{ref} (before)", f"{ref} (after)",
    ))
    record = append_record(audit_log, {
        "time": iso(offset),
        "actor": ACTOR,
        "server": "https://127.0.0.1:6443",
        "target": ref,
        "apiVersion": "networking.istio.io/v1",
        "operation": operation,
        "params": params,
        "before": {"http": before["spec"]["http"]},
        "after": {"http": after["spec"]["http"]},
        "baseResourceVersion": str(resource_version - 1),
    })
    return {
        "operation": operation,
        "target": ref,
        "params": params,
        "changed": before != after,
        "before": {"http": before["spec"]["http"]},
        "after": {"http": after["spec"]["http"]},
        "diff": diff,
        "dryRun": False,
        "attempts": 1,
        "resourceVersion": str(resource_version),
        "auditHash": record["hash"],
    }


# ---------------------------------------------------------------- metrics


def canary_weight_at(offset: float) -> int:
    """The configured canary weight during the release (the phases below set it)."""
    if 44 <= offset < 294:
        return 5
    if 294 <= offset < 540:
        return 25
    return 0


def metric_rows(start: float, end: float, seed: int) -> list[dict[str, Any]]:
    """Tidy rows (timestamp, version, metric, value) at RESOLUTION from `start` to `end`."""
    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []
    for offset in range(int(start), int(end) + 1, RESOLUTION):
        total = 100 * RESOLUTION  # requests in the interval at 100 requests/s
        canary = sum(rng.random() < canary_weight_at(offset) / 100 for _ in range(total))
        counts = {STABLE: total - canary, CANARY: canary}
        bad = offset >= V2_TURNS_BAD
        for version, requests in counts.items():
            stamp = T0 + offset
            rows.append(_row(stamp, version, "request-rate", requests / RESOLUTION))
            rows.append(_row(stamp, version, "traffic-share", requests / total))
            if requests == 0:
                continue
            error_ratio = 0.2 if (version == CANARY and bad) else 0.002
            errors = sum(rng.random() < error_ratio for _ in range(requests))
            rows.append(_row(stamp, version, "error-rate", errors / RESOLUTION))
            rows.append(_row(stamp, version, "success-rate", 1 - errors / requests))
            slow = 5.0 if (version == CANARY and bad) else 1.0
            for metric, base in (("latency-p50", 22), ("latency-p90", 48), ("latency-p99", 95)):
                value = base * slow * math.exp(rng.gauss(0, 0.08))
                rows.append(_row(stamp, version, metric, round(value, 2)))
    return rows


def _row(stamp: float, version: str, metric: str, value: float) -> dict[str, Any]:
    return {"timestamp": stamp, "version": version, "metric": metric, "value": value}


# ---------------------------------------------------------------- decisions


def _success_query(version: str) -> str:
    return (
        f'1 - (sum by (destination_version) (rate(istio_requests_total{{reporter="destination",'
        f'destination_service_namespace="{NAMESPACE}",destination_service_name="{SERVICE}",'
        f'destination_version="{version}",response_code=~"5.."}}[5m])) / sum by '
        f'(destination_version) (rate(istio_requests_total{{destination_version="{version}"}}'
        f'[5m])))'
    )


def _judgement(judge: str, verdict: str, reason: str, values: dict, thresholds: dict,
               evidence: dict | None = None, critical: bool = False) -> dict[str, Any]:
    return {
        "judge": judge, "verdict": verdict, "reason": reason, "values": values,
        "thresholds": thresholds, "queries": [_success_query(CANARY), _success_query(STABLE)],
        "evidence": evidence or {}, "critical": critical, "required": False,
    }


def decision_at_5() -> dict[str, Any]:
    return {
        "verdict": "PASS",
        "reason": "all judges passed",
        "judgements": [
            _judgement("success-rate", "PASS", "canary success rate 99.81% >= 99%",
                       {"canary": 99.81, "stable": 99.79}, {"min_success_rate": 99.0}),
            _judgement("latency", "PASS", "canary p99 96.2 ms <= 500 ms",
                       {"canary_p99_ms": 96.2}, {"max_p99_ms": 500.0}),
            _judgement("error-rate-sequential", "PASS",
                       "no evidence of an error-rate regression so far",
                       {"canary_requests": 12034, "canary_errors": 23},
                       {"alpha": 0.05, "bayes_factor_threshold": 20.0},
                       {"log_bayes_factor": -1.9, "bayes_factor": 0.1496, "p_value": 1.0},
                       critical=True),
        ],
    }


def decision_at_25() -> dict[str, Any]:
    return {
        "verdict": "FAIL",
        "reason": f"error-rate-sequential failed: canary 5xx 19.7% vs stable 0.2% {HOSTILE}",
        "judgements": [
            _judgement("success-rate", "FAIL",
                       f"canary success rate 80.3% < minimum 99% {HOSTILE_IMG}",
                       {"canary": 80.3, "stable": 99.8}, {"min_success_rate": 99.0}),
            _judgement("latency", "FAIL", "canary p99 512.4 ms > maximum 500 ms",
                       {"canary_p99_ms": 512.4}, {"max_p99_ms": 500.0}),
            _judgement("error-rate-sequential", "FAIL",
                       "the errors fall on the canary more often than its traffic share allows "
                       f"(Bayes factor 2.1e+04 >= 20, anytime-valid p = 4.7e-05) {HOSTILE}",
                       {"canary_requests": 30120, "canary_errors": 3410},
                       {"alpha": 0.05, "bayes_factor_threshold": 20.0},
                       {"log_bayes_factor": 9.95, "bayes_factor": 21000.0, "p_value": 4.7e-05},
                       critical=True),
        ],
    }


# ---------------------------------------------------------------- notebooks


def _notebook(runbook_name: str, parameters: dict, result: dict | None,
              error: tuple[str, str] | None) -> nbformat.NotebookNode:
    """An executed-looking runbook: parameters, injected parameters, the recording cell."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nb.metadata["papermill"] = {"parameters": parameters, "input_path": f"{runbook_name}.ipynb",
                                "exception": error is not None}
    defaults = nbformat.v4.new_code_cell("service: str = 'reviews'  # help: the service")
    defaults.metadata["tags"] = ["parameters"]
    injected = nbformat.v4.new_code_cell(
        "\n".join(f"{name} = {value!r}" for name, value in parameters.items())
    )
    injected.metadata["tags"] = ["injected-parameters"]
    work = nbformat.v4.new_code_cell("from canarykit.rollout import runbook\nresult = run_phase()")
    work.execution_count = 3
    last = nbformat.v4.new_code_cell("runbook.record(result)")
    last.execution_count = 4
    if error is not None:
        ename, evalue = error
        work.outputs = [nbformat.v4.new_output(
            "error", ename=ename, evalue=evalue,
            traceback=[f"\x1b[0;31m{ename}\x1b[0m: {evalue}"],
        )]
    else:
        summary = f"{result['runbook']}: {result['outcome']}"
        last.outputs = [nbformat.v4.new_output(
            "display_data", data={runbook.RESULT_MIME: result, "text/plain": summary},
        )]
    nb.cells = [nbformat.v4.new_markdown_cell(f"# {runbook_name}"), defaults, injected, work,
                last]
    return nb


def _result(runbook_name: str, parameters: dict, start: float, end: float, **fields) -> dict:
    return {
        "runbook": runbook_name, "started": iso(start), "finished": iso(end),
        "parameters": runbook.check_parameters(dict(parameters)), "outcome": "ok",
        "error": None, "decision": None, "changes": [], "weights": None, "metrics": [],
        "notes": [], **fields,
    }


PLAN = f"""\
service: {SERVICE}
namespace: {NAMESPACE}
stable: {STABLE}
canary: {CANARY}
prometheus:
  url: http://127.0.0.1:9090
  bearer_token_env: PROM_TOKEN
description: "release of v2 {HOSTILE}"
steps:
  - internal-canary: {{header: x-canary}}
  - weight: 5
    analysis: {{window: 4m, interval: 10s, judges: [success-rate, latency, sequential]}}
  - weight: 25
    analysis: {{window: 4m, interval: 10s, judges: [success-rate, latency, sequential]}}
  - weight: 100
inconclusive: {{hold_steps: 2}}
reports: reports
"""


def write_release(folder: Path, *, with_failed_phase: bool = True) -> Path:
    """Write the release folder described in the module docstring into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    audit_log = folder / "audit.jsonl"
    (folder / "plan.yaml").write_text(PLAN, encoding="utf-8")
    base = {"service": SERVICE, "namespace": NAMESPACE, "audit_log": str(audit_log)}
    vs_off = _virtual_service({STABLE: 100, CANARY: 0}, header_route=False)
    vs_internal = _virtual_service({STABLE: 100, CANARY: 0}, header_route=True)
    vs_5 = _virtual_service({STABLE: 95, CANARY: 5}, header_route=True)
    vs_25 = _virtual_service({STABLE: 75, CANARY: 25}, header_route=True)

    # (name, runbook, start, end, parameters, result fields or None, error or None)
    phases: list[tuple[str, str, float, float, dict, dict | None, tuple | None]] = [
        ("preflight", "preflight", 0, 15, base,
         {"weights": {STABLE: 100, CANARY: 0},
          "notes": ["VirtualService and DestinationRule validate", "Prometheus reachable"]},
         None),
        ("internal-canary", "internal-canary", 15, 25, {**base, "header": "x-canary"},
         {"weights": {STABLE: 100, CANARY: 0},
          "changes": [_change(audit_log, 24, "add-header-route", {"header": "x-canary"},
                              vs_off, vs_internal, 101)]},
         None),
    ]
    if with_failed_phase:
        phases.append(("shift-5", "shift-traffic", 25, 28, {**base, "canary_weight": 5}, None,
                       ("ConcurrentChangeError",
                        "VirtualService shop/reviews changed by someone else while canarykit "
                        f"was changing it (resourceVersion 101 -> 102) {HOSTILE_IMG}")))
    phases += [
        ("shift-5", "shift-traffic", 40, 44,
         {**base, "canary_weight": 5, "change_ticket": HOSTILE},
         {"weights": {STABLE: 95, CANARY: 5},
          "notes": [f"ticket {HOSTILE}"],
          "changes": [_change(audit_log, 43, "set-weights", {"weights": {STABLE: 95, CANARY: 5}},
                              vs_internal, vs_5, 103)]},
         None),
        ("analyze-5", "analyze", 44, 284, {**base, "window": "4m", "interval": "10s"},
         {"decision": decision_at_5(), "metrics": metric_rows(10, 280, seed=5)}, None),
        ("shift-25", "shift-traffic", 290, 294, {**base, "canary_weight": 25},
         {"weights": {STABLE: 75, CANARY: 25},
          "changes": [_change(audit_log, 293, "set-weights",
                              {"weights": {STABLE: 75, CANARY: 25}}, vs_5, vs_25, 104)]},
         None),
        ("analyze-25", "analyze", 294, 531, {**base, "window": "4m", "interval": "10s"},
         {"decision": decision_at_25(), "metrics": metric_rows(290, 530, seed=25)}, None),
        ("rollback", "rollback", 531, 540, {**base, "reason": "analyze-25 FAIL"},
         {"weights": {STABLE: 100, CANARY: 0},
          "metrics": metric_rows(540, 600, seed=99),
          "changes": [_change(audit_log, 538, "rollback", {}, vs_25, vs_off, 105)]},
         None),
    ]

    entries = []
    for index, (name, runbook_name, start, end, params, fields, error) in enumerate(phases, 1):
        notebook = f"{index:02d}-{name}.ipynb"
        result = None if fields is None else _result(runbook_name, params, start, end, **fields)
        nbformat.write(_notebook(runbook_name, params, result, error), str(folder / notebook))
        decision = (result or {}).get("decision")
        entries.append({
            "index": index, "name": name, "runbook": runbook_name, "notebook": notebook,
            "started": iso(start), "finished": iso(end),
            "outcome": "error" if error else "ok",
            "verdict": decision["verdict"] if decision else None,
            "actor": ACTOR, "runner": RUNNER,
        })
    release = {
        "service": SERVICE, "namespace": NAMESPACE, "release": RELEASE,
        "stable": STABLE, "canary": CANARY, "started": iso(0), "finished": iso(540),
        "status": "rolled-back",
        "reason": f"analyze-25 FAIL: canary 5xx 19.7% vs stable 0.2% {HOSTILE}",
        "phases": entries,
    }
    (folder / "release.json").write_text(json.dumps(release, indent=2), encoding="utf-8")
    return folder
