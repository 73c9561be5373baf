"""What the runbooks do: one function per rollout phase, called from a thin notebook.

Each phase function takes the connected `Target` and the runbook's `RunbookResult` (from
`runbook.new_result`), refuses bad parameters before it changes anything, appends every change
it applies to `result.changes`, sets `result.weights` (the configured split afterwards) and
`result.decision` where it judges; the outcome becomes OK when it gets to the end. When a phase
fails it records the result with outcome ERROR (and whatever it had already applied) and
raises, so papermill stops with one clear error in the executed notebook.

Evidence is chained across weight changes: `analyze` rebuilds the rollout's weight periods from
the audit log (the `begin_rollout` record of this rollout and every later change to the
VirtualService) and hands the counts of each earlier period to the sequential error-rate test.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

from canarykit.analysis import metrics as m
from canarykit.analysis import templates
from canarykit.analysis.judges import Decision, Judgement, Verdict, decide
from canarykit.analysis.sequential import Segment
from canarykit.analysis.settings import AnalysisSettings
from canarykit.analysis.step import run_analysis
from canarykit.cluster import audit
from canarykit.cluster import client as cluster
from canarykit.cluster.state import AUDIT_HEAD_ANNOTATION, read_state, with_state
from canarykit.core import times
from canarykit.core.durations import format_duration
from canarykit.core.errors import BadInput, CanaryKitError
from canarykit.mesh import istio, traffic, validate, versions
from canarykit.rollout import runbook
from canarykit.rollout.parameters import analysis_settings, default
from canarykit.rollout.target import (  # noqa: F401 - connect_target: for the runbooks
    Target,
    connect_target,
    flag_parameter,
    metrics_selector,
    prometheus_client,
    renamed,
    router_of,
    subset_versions,
    text_parameter,
)
from canarykit.routers import Objects, Router, adopt_rollout
from canarykit.routers.istio import INTERNAL_ROUTES

if TYPE_CHECKING:
    import pandas as pd

# Seconds after a weight change before its traffic counts: Envoy takes the new routes and
# Prometheus scrapes at least once (the lab scrapes every second).
SETTLE_SECONDS = 2.0
# The shortest window worth asking Prometheus about (a few scrapes).
MIN_SPAN_SECONDS = 5.0
BASELINE_MIN_REQUESTS = 10

class PhaseFailed(CanaryKitError):
    """A phase could not do its job (for example preflight found the baseline unhealthy)."""


# ---------------------------------------------------------------- recording


def _phase(function: Callable[..., Any]) -> Callable[..., Any]:
    """Mark the result ok at the end; on failure record what was done, then raise."""

    @functools.wraps(function)
    def run(target: Target, result: runbook.RunbookResult, *args: Any, **kwargs: Any) -> Any:
        try:
            value = function(target, result, *args, **kwargs)
        except Exception as exc:
            result.outcome = runbook.Outcome.ERROR
            result.error = runbook.error_text(exc)
            runbook.record(result)
            raise
        result.outcome = runbook.Outcome.OK
        result.error = None
        return value

    return run


def configured_weights(vs: dict[str, Any], stable: str, canary: str) -> dict[str, int] | None:
    """The split of a VirtualService's canary route ({stable: 75, canary: 25}), or None."""
    from canarykit.routers.istio import IstioRouter

    return IstioRouter(None, "", stable, canary).weights(vs)  # type: ignore[arg-type]


def _record_change(result: runbook.RunbookResult, applied: cluster.AppliedChange) -> None:
    if applied.change.changed:
        result.changes.append(applied.to_dict())
    else:
        result.notes.append(f"{applied.change.operation} on {applied.change.target}: "
                               "nothing to change")


def _set_weights(target: Target, result: runbook.RunbookResult) -> dict[str, Any]:
    router = router_of(target)
    route = router.route()
    adopt_rollout(router, route)
    result.weights = router.weights(route)
    return route


def _ensure_rollout(target: Target, result: runbook.RunbookResult,
                    objects: Objects | None = None) -> None:
    """Start the rollout (the pre-rollout snapshot rollback restores) unless one is running;
    `objects`: the routing objects as the phase has just read them."""
    router = router_of(target)
    if objects is None:
        objects = router.read()
        adopt_rollout(router, objects.route)  # its routes that move together
    vs = objects.route
    running = read_state(vs)
    state = cluster.start_rollout(target.cluster, vs, {} if running else router.snapshot(objects),
                                  stable=target.stable, canary=target.canary,
                                  release=target.release, audit_log=target.audit_log,
                                  routes=router.routes)
    result.release = state.release
    if running is not None:
        if target.release and target.release != state.release:
            result.notes.append(f"release {state.release} is in progress; continuing it "
                                   f"(release parameter {target.release} not used)")
        return
    after = router.route()
    change = traffic.Change("begin_rollout", {"stable": target.stable, "canary": target.canary,
                                              "release": state.release,
                                              **({"routes": list(router.routes)}
                                                 if router.routes else {})},
                            istio.copy_object(vs), with_state(vs, state))
    head = (after["metadata"].get("annotations") or {}).get(AUDIT_HEAD_ANNOTATION)
    result.changes.append(
        cluster.AppliedChange(change, after, False, 1, {"hash": head}).to_dict())


def _apply(target: Target, result: runbook.RunbookResult,
           operation: Callable[[dict[str, Any]], traffic.Change]) -> cluster.AppliedChange:
    applied = cluster.apply_change(target.cluster, operation(router_of(target).route()),
                                   audit_log=target.audit_log)
    _record_change(result, applied)
    return applied


def _selector(target: Target, result: runbook.RunbookResult,
              found: tuple[versions.SubsetVersion, versions.SubsetVersion]) -> m.MetricsSelector:
    """The metrics' selector by the subsets' versions, said in the notes: a subset's name is
    not what the metrics carry, and a reader should see which version was judged."""
    for role, item in zip(("stable", "canary"), found, strict=True):
        source = (f"its label {item.label}" if item.label else
                  "its name: the subset has no " + ", ".join(
                      versions.VERSION_LABEL_KEYS) + " label")
        result.notes.append(f"metrics: {item.describe(role)}, version from {source}")
    return metrics_selector(target, found)


def _versions_evidence(selector: m.MetricsSelector) -> dict[str, Any]:
    return {"stable": {"subset": selector.stable_subset, "version": selector.stable},
            "canary": {"subset": selector.canary_subset, "version": selector.canary}}


# ---------------------------------------------------------------- preflight


def _judgement(judge: str, verdict: Verdict, reason: str, values: dict | None = None,
               thresholds: dict | None = None, queries: list[str] | None = None) -> Judgement:
    return Judgement(judge, verdict, reason, values or {}, thresholds or {}, queries or [])


def _check_objects(target: Target) -> tuple[Judgement, Objects | None]:
    judge = f"{target.router or 'istio'}-objects"
    try:
        router = router_of(target)
        judge = f"{router.name}-objects"
        objects = router.read()
    except CanaryKitError as exc:
        return _judgement(judge, Verdict.FAIL, str(exc)), None
    problems = router.problems(objects)
    values = router.describe(objects)
    if problems:
        return _judgement(judge, Verdict.FAIL, "; ".join(problems), values), objects
    shown = " and ".join(str(v) for k, v in values.items()
                         if k in ("virtualService", "destinationRule", "route"))
    return _judgement(judge, Verdict.PASS,
                      f"{shown} validate and route {target.stable}/{target.canary} on one "
                      "route", values), objects


def _check_rollout(target: Target, objects: Objects | None) -> Judgement:
    if objects is None:
        return _judgement("rollout", Verdict.INCONCLUSIVE, "not checked: no routing object")
    state = read_state(objects.route)
    if state is None:
        return _judgement("rollout", Verdict.PASS, "no rollout in progress")
    values = {"release": state.release, "stable": state.stable, "canary": state.canary}
    if (state.stable, state.canary) != (target.stable, target.canary):
        return _judgement("rollout", Verdict.FAIL,
                          f"a rollout of {state.canary} over {state.stable} (release "
                          f"{state.release}) is in progress; roll it back or finish it first",
                          values)
    return _judgement("rollout", Verdict.PASS,
                      f"rollout {state.release} of {state.canary} is in progress; continuing",
                      values)


def _ready_replicas(deployment: Any) -> tuple[int, str]:
    """Ready replicas, and a note when the API server reports no status (no controller)."""
    status = deployment.status
    if status is None or status.observed_generation is None:
        return int(deployment.spec.replicas or 0), "no status reported; spec.replicas taken"
    return int(status.ready_replicas or 0), ""


def _check_subsets(target: Target, objects: Objects | None) -> Judgement:
    """Each version has Deployments with ready replicas: the pods its subset (Istio) or its
    backend Service (Gateway API) selects."""
    if objects is None:
        return _judgement("subsets", Verdict.INCONCLUSIVE, "not checked: no routing object")
    from kubernetes import client as k8s  # here: not every runbook kernel needs it

    router = router_of(target)
    try:
        wanted_by_version = router.backend_labels(objects)
    except CanaryKitError as exc:
        return _judgement("subsets", Verdict.FAIL, str(exc))
    try:
        deployments = k8s.AppsV1Api(target.cluster.api).list_namespaced_deployment(
            target.namespace).items
    except k8s.ApiException as exc:
        return _judgement("subsets", Verdict.FAIL, f"cannot list Deployments in "
                          f"{target.namespace}: {cluster.api_error_text(exc)}")
    values: dict[str, Any] = {}
    problems = []
    for subset in (target.stable, target.canary):
        if subset not in wanted_by_version:
            problems.append(router.missing_backend(objects, subset))
            continue
        wanted = wanted_by_version[subset]
        matching = [d for d in deployments
                    if all(((d.spec.template.metadata.labels or {}).get(k) == v)
                           for k, v in wanted.items())]
        ready, notes = 0, set()
        for deployment in matching:
            count, note = _ready_replicas(deployment)
            ready += count
            if note:
                notes.add(note)
        values[subset] = {"labels": wanted, "deployments": [d.metadata.name for d in matching],
                          "ready_replicas": ready, "notes": sorted(notes)}
        if not matching:
            problems.append(f"no Deployment in {target.namespace} has the labels of "
                            f"{subset} ({wanted})")
        elif ready <= 0:
            problems.append(f"{subset}: Deployments "
                            f"{', '.join(values[subset]['deployments'])} have no ready replica")
    if problems:
        return _judgement("subsets", Verdict.FAIL, "; ".join(problems), values)
    return _judgement("subsets", Verdict.PASS, "; ".join(
        f"{s}: {', '.join(values[s]['deployments'])} ({values[s]['ready_replicas']} ready)"
        for s in (target.stable, target.canary)), values)


def _check_baseline(target: Target, client: m.Client, selector: m.MetricsSelector,
                    minimum: float, window: str, seconds: float) -> Judgement:
    now = time.time()
    counts = m.raw_counts(client, selector, now - seconds, now)
    queries = [o.query for o in counts.outcomes[:2]]
    thresholds = {"min_success_rate": minimum, "min_requests": BASELINE_MIN_REQUESTS,
                  "window": window}
    stable = counts.versions.get(selector.stable)
    if counts.failure is not None:
        return _judgement("baseline-success-rate", Verdict.INCONCLUSIVE, counts.failure.message,
                          {}, thresholds, queries)
    if stable is None or stable["requests"] < BASELINE_MIN_REQUESTS:
        seen = 0 if stable is None else stable["requests"]
        return _judgement(
            "baseline-success-rate", Verdict.INCONCLUSIVE,
            f"no baseline: {seen:.0f} requests to the {selector.describe('stable')} of "
            f"{target.service} in the last {window} (at least {BASELINE_MIN_REQUESTS} needed)",
            {"requests": seen}, thresholds, queries)
    errors = min(stable["errors"], stable["requests"])
    rate = 100.0 * (stable["requests"] - errors) / stable["requests"]
    values = {"requests": stable["requests"], "errors": errors, "success_rate": rate}
    verdict = Verdict.PASS if rate >= minimum else Verdict.FAIL
    sign = ">=" if verdict == Verdict.PASS else "<"
    return _judgement("baseline-success-rate", verdict,
                      f"{selector.describe('stable')} success rate {rate:.2f}% {sign} "
                      f"{minimum:g}% over "
                      f"{stable['requests']:.0f} requests in the last {window}",
                      values, thresholds, queries)


@_phase
def preflight(target: Target, result: runbook.RunbookResult, *,
              min_baseline_success_rate: float = default("preflight", "min_baseline_success_rate"),
              baseline_window: str = default("preflight", "baseline_window"),
              version_label_key: str = default("preflight", "version_label_key")) -> Decision:
    """Everything a rollout relies on, checked before it starts; raises unless all PASS.
    The baseline is read by the version the stable subset's pods report (its labels in the
    DestinationRule, `version_label_key` or Istio's precedence), never by the subset's name."""
    _percentage("min_baseline_success_rate", min_baseline_success_rate)
    versions.check_label_key("version_label_key", version_label_key)
    seconds = m.parse_window(baseline_window, "baseline_window")
    settings = target.prometheus
    client = prometheus_client(target)
    checked, objects = _check_objects(target)
    found = [checked, _check_rollout(target, objects), _check_subsets(target, objects)]
    probe = m.query_at(client, "vector(1)", time.time())
    reachable = probe.status not in (m.UNREACHABLE, m.HTTP_ERROR)
    found.append(_judgement(
        "prometheus", Verdict.PASS if reachable else Verdict.FAIL,
        f"Prometheus at {settings.url} answers" if reachable
        else f"prometheus_url {settings.url!r}: {probe.message}", queries=[probe.query]))
    selector = _preflight_selector(target, result, objects, version_label_key, found)
    if reachable and selector is not None:
        found.append(_check_baseline(target, client, selector, min_baseline_success_rate,
                                     baseline_window, seconds))
        now = time.time()
        result.metrics = _metric_rows(client, selector, now - seconds, now,
                                      min(seconds, 10.0))
    decision = decide(found)
    result.decision = decision.to_dict()
    if objects is not None:
        result.weights = router_of(target).weights(objects.route)
    if not reachable:
        raise BadInput("prometheus_url", settings.url, f"Prometheus does not answer: "
                       f"{probe.message}")
    if decision.verdict != Verdict.PASS:
        raise PhaseFailed(f"preflight {decision.verdict.value}: {decision.reason}")
    return decision


def _preflight_selector(target: Target, result: runbook.RunbookResult, objects: Objects | None,
                        label_key: str, found: list[Judgement]) -> m.MetricsSelector | None:
    """The baseline's selector from the objects already read; None (the baseline not
    checked, a judgement saying why) when there are none or the versions cannot be told
    apart."""
    if objects is None:
        found.append(_judgement("baseline-success-rate", Verdict.INCONCLUSIVE,
                                "not checked: no routing object to read the versions from"))
        return None
    try:
        pair = router_of(target).versions(objects, label_key)
    except BadInput as exc:
        found.append(_judgement("versions", Verdict.FAIL, str(exc)))
        return None
    selector = _selector(target, result, pair)
    result.evidence = {"versions": _versions_evidence(selector)}
    return selector


def _percentage(field: str, value: Any) -> float:
    if (isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value)
            or not 0 <= value <= 100):
        raise BadInput(field, value, "must be a percentage from 0 to 100")
    return float(value)


# ---------------------------------------------------------------- changing traffic


def parse_labels(field: str, text: str) -> dict[str, str] | None:
    """`app=reviews-tester,version=v1` as labels (None for "")."""
    text_parameter(field, text)
    if not text:
        return None
    labels = {}
    for item in text.split(","):
        key, sep, value = item.strip().partition("=")
        if not sep or not key:
            raise BadInput(field, text, "must be labels as KEY=VALUE, comma-separated, e.g. "
                           "app=reviews-tester")
        labels[key] = value
    return labels


def internal_routes(router: Router, *, header: str = "", header_value: str = "",
                    header_match: str = "exact", cookie_name: str = "", cookie_value: str = "",
                    query_parameter: str = "", query_value: str = "", source_labels: str = ""
                    ) -> list[tuple[Callable[..., traffic.Change], dict[str, str]]]:
    """The match routes internal_canary adds (each with the names its refusals get as the
    runbook's parameters), in INTERNAL_ROUTES order."""
    labels = parse_labels("source_labels", source_labels)
    if not (header or cookie_name or query_parameter or labels):
        raise BadInput("header", header, "give a header, a cookie_name, a query_parameter or "
                       "source_labels")
    operations = []
    if header:
        operations.append((functools.partial(
            router.add_match_route, name=INTERNAL_ROUTES[0], header=header, value=header_value,
            match=header_match), {"value": "header_value", "match": "header_match",
                                  "headers": "header"}))
    if cookie_name:
        operations.append((functools.partial(
            router.add_match_route, name=INTERNAL_ROUTES[1], cookie=(cookie_name, cookie_value)),
            {"value": "cookie_value", "cookie": "cookie_name"}))
    if query_parameter:  # query parameters match exactly or by regex: a prefix is a regex
        match, value = header_match, query_value
        if match == "prefix":
            match, value = "regex", traffic.prefix_regex(query_value)
        operations.append((functools.partial(
            router.add_match_route, name=INTERNAL_ROUTES[2], query=query_parameter,
            value=value, match=match),
            {"value": "query_value", "match": "header_match", "query_params": "query_value"}))
    if labels:
        operations.append((functools.partial(
            router.add_match_route, name=INTERNAL_ROUTES[3], source_labels=labels), {}))
    return operations


@_phase
def internal_canary(target: Target, result: runbook.RunbookResult, *,
                    header: str = default("internal-canary", "header"),
                    header_value: str = default("internal-canary", "header_value"),
                    header_match: str = default("internal-canary", "header_match"),
                    cookie_name: str = default("internal-canary", "cookie_name"),
                    cookie_value: str = default("internal-canary", "cookie_value"),
                    query_parameter: str = default("internal-canary", "query_parameter"),
                    query_value: str = default("internal-canary", "query_value"),
                    source_labels: str = default("internal-canary", "source_labels")) -> None:
    """Route internal users (a header, a cookie, a query parameter, calls from one workload)
    to the canary only, ahead of the split: one route each for what is given."""
    for name, value in (("header", header), ("header_value", header_value),
                        ("header_match", header_match), ("cookie_name", cookie_name),
                        ("cookie_value", cookie_value), ("query_parameter", query_parameter),
                        ("query_value", query_value)):
        text_parameter(name, value)
    router = router_of(target)
    operations = internal_routes(router, header=header, header_value=header_value,
                                 header_match=header_match, cookie_name=cookie_name,
                                 cookie_value=cookie_value, query_parameter=query_parameter,
                                 query_value=query_value, source_labels=source_labels)
    objects = router.read()
    adopt_rollout(router, objects.route)  # its routes that move together
    trial = objects.route
    for operation, names in operations:  # every route is checked before anything is written
        try:
            trial = operation(trial, extra=objects.extra).after
        except BadInput as err:
            raise renamed(err, names) from None
    _refuse_invalid(trial)
    _ensure_rollout(target, result, objects)
    for operation, _ in operations:
        _apply(target, result, functools.partial(operation, extra=objects.extra))
    _set_weights(target, result)


def _refuse_invalid(vs: dict[str, Any]) -> None:
    errors = [msg for msg in validate.validate_object(vs) if msg.level == "Error"]
    if errors:
        raise cluster.InvalidChange(errors)


@_phase
def shift_traffic(target: Target, result: runbook.RunbookResult, *, canary_weight: int) -> None:
    """Send `canary_weight`% of the canary route to the canary (starting the rollout)."""
    router = router_of(target)
    objects = router.read()
    adopt_rollout(router, objects.route)  # its routes that move together
    router.set_canary_weight(objects.route, canary_weight, objects.extra)  # refused before
    _ensure_rollout(target, result, objects)                               # anything is written
    _apply(target, result, lambda route: router.set_canary_weight(route, canary_weight,
                                                                  objects.extra))
    _set_weights(target, result)


@_phase
def blue_green_switch(target: Target, result: runbook.RunbookResult, *, to_subset: str) -> None:
    """Send all of the canary route's traffic to one version (blue-green)."""
    router = router_of(target)
    objects = router.read()
    adopt_rollout(router, objects.route)  # its routes that move together
    if to_subset not in (target.stable, target.canary):
        raise BadInput("to_subset", to_subset, f"must be the stable ({target.stable}) or the "
                       f"canary ({target.canary}) version")
    router.switch_all_traffic(objects.route, to_subset, objects.extra)
    _ensure_rollout(target, result, objects)
    _apply(target, result, lambda route: router.switch_all_traffic(route, to_subset,
                                                                   objects.extra))
    _set_weights(target, result)


def policy_values(given: Mapping[str, Any]) -> dict[str, Any]:
    """The traffic-policy runbook's settings that were given: "" and -1 mean "leave as is";
    flags and statuses given as text become their values."""
    from canarykit.mesh import policy

    found = {}
    for name, value in given.items():
        if name not in policy.BY_NAME or value in ("", -1) and not isinstance(value, bool):
            continue
        if isinstance(value, str):
            value = policy.parse_text(name, value, "runbook")
        found[name] = value
    return found


@_phase
def traffic_policy(target: Target, result: runbook.RunbookResult, *, route: str = "",
                   subset: str = "", clear: str = "", dry_run: bool = False,
                   **settings: Any) -> None:
    """Set or clear timeout, retries, fault, affinity, outlier detection and connection pool
    (starting the rollout, so rollback restores them, unless dry_run)."""
    from canarykit.mesh import policy
    from canarykit.routers import set_traffic_policy

    for name, value in (("route", route), ("subset", subset)):
        text_parameter(name, value)
    flag_parameter("dry_run", dry_run)
    groups = policy.check_clear(text_parameter("clear", clear))
    values = policy.check_settings(policy_values(settings), groups, "runbook")
    router = router_of(target)
    options = {"route": route or None, "subset": subset or None, "naming": "runbook"}
    objects = router.read()
    changes = router.policy_changes(objects, values, groups, **options)  # refused first
    if not dry_run and any(change.changed for change in changes):
        _ensure_rollout(target, result, objects)
    applied = set_traffic_policy(router, values, groups, dry_run=dry_run,
                                 audit_log=target.audit_log, release=target.release, **options)
    for item in applied:
        if dry_run:
            result.notes.append(f"dry run: {item.change.target} "
                                + ("would change" if item.change.changed else "unchanged"))
        else:
            _record_change(result, item)
    state = read_state(_set_weights(target, result))
    if state is not None:
        result.release = state.release


@_phase
def promote(target: Target, result: runbook.RunbookResult, *,
            move_routes: bool = default("promote", "move_routes")) -> None:
    """All traffic to the canary, temporary routes gone, the rollout ended: one atomic write,
    so a promote that dies half-way never leaves a half-promoted route. Routes the rollout
    did not manage that still send traffic to the old version are listed (in the notes and
    `evidence.left_on_stable`), or with `move_routes` moved to the canary in the same write."""
    flag_parameter("move_routes", move_routes)
    router = router_of(target)
    objects = router.read()
    adopt_rollout(router, objects.route)  # its routes that move together
    state = read_state(objects.route)
    if state is not None and (state.stable, state.canary) != (target.stable, target.canary):
        raise BadInput("canary", target.canary, f"the rollout in progress is of {state.canary} "
                       f"over {state.stable} (release {state.release})")
    release = state.release if state else target.release
    if state is None:
        result.notes.append("no rollout in progress; switching all traffic to "
                               f"{target.canary} anyway")
    applied = _apply(target, result,
                     lambda route: router.promote(route, objects.extra, release,
                                                  move=move_routes))
    result.release = release
    _set_weights(target, result)
    result.notes.append(f"{target.canary} is now the stable version of {target.service}")
    left = router.left_on_stable(applied.result)
    moved = applied.change.params.get("moved_routes") or []
    result.evidence = {"left_on_stable": left, "moved_routes": moved}
    if moved:
        result.notes.append(f"moved to {target.canary} as well: {', '.join(moved)}")
    if left:
        result.notes.append(f"still sending traffic to {target.stable}, not managed by the "
                            f"rollout: {', '.join(left)}; move them before scaling "
                            f"{target.stable} down")


@_phase
def rollback(target: Target, result: runbook.RunbookResult, *,
             reason: str = default("rollback", "reason")) -> None:
    """Restore the pre-rollout VirtualService and DestinationRule and end the rollout."""
    text_parameter("reason", reason)
    if reason:
        result.notes.append(f"reason: {reason}")
    router = router_of(target)
    route = router.route()
    state = read_state(route)
    if state is None:
        weights = router.weights(route) or {}
        clean = weights.get(target.canary) == 0 and not router.diverted(route)
        if not clean:
            raise PhaseFailed(
                f"no rollout in progress on {istio.object_ref(route)} (no snapshot to restore) "
                f"and traffic is not all on {target.stable} (weights {weights}); use the "
                "blue-green or shift-traffic runbook to move it")
        result.notes.append(f"nothing to roll back: no rollout in progress and all traffic "
                               f"is on {target.stable}")
    else:
        result.release = state.release
        for applied in router.rollback(audit_log=target.audit_log):
            _record_change(result, applied)
    _set_weights(target, result)


# ---------------------------------------------------------------- analysis


def _metric_rows(client: m.Client, selector: m.MetricsSelector, start: float, end: float,
                 step: float) -> list[dict[str, Any]]:
    """Tidy rows of the standard metrics over [start, end], one point per step."""
    first = min(start + step, end)
    frame = m.range_frame(client, selector, first, end, step_seconds=step)
    return [{"timestamp": row.timestamp.timestamp(), "version": row.version,
             "metric": row.metric, "value": float(row.value)}
            for row in frame.itertuples() if math.isfinite(row.value)]



def _template_rows(client: m.Client, selector: m.MetricsSelector, config: AnalysisSettings,
                   start: float, end: float) -> list[dict[str, Any]]:
    """The canary's custom metrics per interval over [start, end], for the charts: rows of
    the metric `metric:NAME` (dry-run ones too; the decision says which)."""
    step = min(config.interval_seconds, max(end - start, 0.001))
    first = min(start + step, end)  # each point covers the step before it, as _metric_rows
    return [{"timestamp": stamp, "version": selector.canary, "metric": metric.judge,
             "value": value}
            for metric in config.metrics
            for stamp, value in templates.samples(client, metric, selector, start=first,
                                                  end=end, step_seconds=step)]


@dataclass
class WeightPeriod:
    """A stretch of the rollout at one configured canary weight (Unix seconds; `end` None while
    it lasts). `share_known` is False while routes for matched users or a mirror send the
    canary more than its weight."""

    start: float
    end: float | None
    weight: int
    share_known: bool

    def to_dict(self) -> dict[str, Any]:
        """For the recorded evidence: times as RFC 3339."""
        return {**asdict(self), "start": times.timestamp(self.start),
                "end": times.timestamp(self.end) if self.end is not None else None}


def weight_periods(records: list[dict[str, Any]], *, virtual_service: str, namespace: str,
                   stable: str, canary: str, release: str,
                   router: Router | None = None) -> list[WeightPeriod]:
    """The rollout's periods of constant canary weight, oldest first, from its audit records.

    Starts at the `begin_rollout` record of `release` on `virtual_service` (the routing
    object, e.g. "VirtualService default/reviews" or "HTTPRoute default/reviews"); each later
    record of that object whose canary weight differs starts a new period. `share_known` is
    False while routes send matched users to the canary or traffic is mirrored (the canary's
    share then differs from its weight). `router` reads the weights (default: Istio's).
    """
    kind = virtual_service.split(" ")[0]
    mine = [r for r in records if r.get("target") == virtual_service]
    begins = [i for i, r in enumerate(mine) if r.get("operation") == "begin_rollout"
              and (r.get("params") or {}).get("release") == release]
    if not begins:
        return []
    if router is None:  # read the records as the router of that kind would
        from canarykit.routers.gateway_api import ROUTE_KINDS, GatewayRouter
        from canarykit.routers.istio import IstioRouter

        implementation = GatewayRouter if kind in ROUTE_KINDS else IstioRouter
        routes = tuple((mine[begins[-1]].get("params") or {}).get("routes") or ())
        router = implementation(None, "", stable, canary, routes)  # type: ignore[arg-type]
    periods: list[WeightPeriod] = []
    for record in mine[begins[-1]:]:
        if record is not mine[begins[-1]] and record.get("operation") == "begin_rollout":
            break
        vs = {"kind": kind, "metadata": {"namespace": namespace},
              "spec": record.get("after") or {}}
        try:
            weights = router.weights(vs)
            known = not router.diverted(vs)
        except BadInput:
            continue
        if weights is None:
            continue
        at = times.parse_timestamp(record["time"]).timestamp()
        weight = weights[canary]
        if periods and (periods[-1].weight, periods[-1].share_known) == (weight, known):
            continue
        if periods:
            periods[-1].end = at
        periods.append(WeightPeriod(start=at, end=None, weight=weight, share_known=known))
        if record.get("operation") in ("rollback", "promote"):
            break
    return periods


def period_segments(client: m.Client, selector: m.MetricsSelector,
                    periods: list[WeightPeriod]) -> tuple[list[Segment], list[str]]:
    """A sequential-test Segment of the counts of each finished period (and notes on the
    periods left out): the evidence gathered at earlier weights."""
    segments, notes = [], []
    for period in periods:
        if period.end is None:
            continue
        if period.share_known and not 0 < period.weight < 100:
            continue  # all traffic on one version: nothing to compare
        start, end = period.start + SETTLE_SECONDS, period.end
        label = f"weight {period.weight} from {times.timestamp(period.start)}"
        if end - start < MIN_SPAN_SECONDS:
            notes.append(f"{label}: too short to measure")
            continue
        counts = m.raw_counts(client, selector, start, end)
        stable = counts.versions.get(selector.stable)
        canary = counts.versions.get(selector.canary)
        if counts.failure is not None or stable is None or canary is None:
            notes.append(f"{label}: no counts for both versions")
            continue
        total = stable["requests"] + canary["requests"]
        share = (period.weight / 100 if period.share_known
                 else canary["requests"] / total if total else 0.0)
        if not 0 < share < 1:
            continue
        segments.append(Segment(
            canary_share=share,
            stable_requests=int(round(stable["requests"])),
            stable_errors=int(round(min(stable["errors"], stable["requests"]))),
            canary_requests=int(round(canary["requests"])),
            canary_errors=int(round(min(canary["errors"], canary["requests"]))),
            started_at=start))
    return segments, notes



def _check_record(decision: Decision, start: float, end: float, covered: bool) -> dict:
    sequential = next((j for j in decision.judgements if j.judge == "error-rate-sequential"),
                      None)
    evidence = sequential.evidence if sequential else {}
    record = {"time": times.timestamp(end), "seconds": round(end - start, 3),
              "verdict": decision.verdict.value, "reason": decision.reason,
              "window_covered": covered, "p_value": evidence.get("p_value"),
              "bayes_factor": evidence.get("bayes_factor")}
    measured = {j.judge: j.values.get("value") for j in decision.judgements
                if j.judge.startswith("metric:")}
    if measured:  # the custom metrics' values at this check, dry-run ones too
        record["metrics"] = measured
    return record


def _iterate(target: Target, client: m.Client, selector: m.MetricsSelector,
             config: AnalysisSettings, *, start: float, began: float, limit: float,
             check_every: float, segments: list[Segment], checks: list[dict],
             rollout_start: float | None = None) -> tuple[Decision, float, list[dict]]:
    """Flagger's iterations and threshold: `iterations` checks, each over its own window (the
    next starts where the last ended), counting those that FAIL.

    The step FAILs as soon as `threshold` checks failed (the rest are not run). It PASSes
    only when all iterations ran with fewer failures and the last check PASSed; otherwise it
    is INCONCLUSIVE. An INCONCLUSIVE check (no data, too few requests) is not a failure, and
    never a pass either: only a PASS of the last check can make the step PASS. Each check is
    one `_judge` (with until_verdict it re-checks every `check_every` and waits at most
    `max_duration`); every record in `checks` gets its iteration and the failed checks so
    far. With the defaults (1, 1) this is exactly one `_judge`.
    """
    window = config.window_seconds
    failed, summary = 0, []
    for iteration in range(1, config.iterations + 1):
        first = len(checks)
        opened = began if iteration == 1 else time.time()
        decision, end = _judge(target, client, selector, config, start=start, window=window,
                               until_verdict=config.until_verdict,
                               deadline=max(opened + limit, start + window),
                               check_every=check_every, segments=segments, checks=checks,
                               rollout_start=rollout_start)
        before = failed
        failed += decision.verdict == Verdict.FAIL
        for record in checks[first:]:
            record.update(iteration=iteration, failed_checks=before)
        if len(checks) > first:
            checks[-1]["failed_checks"] = failed
        summary.append({"iteration": iteration, "verdict": decision.verdict.value,
                        "reason": decision.reason, "start": times.timestamp(start),
                        "end": times.timestamp(end), "failed_checks": failed})
        if failed >= config.threshold:
            break
        start = end
    if config.iterations == 1:
        return decision, end, summary
    count = (f"{failed} of {len(summary)} checks failed (threshold {config.threshold}, "
             f"{config.iterations} iterations)")
    if failed >= config.threshold:
        return Decision(Verdict.FAIL, f"{count}: {decision.reason}", decision.judgements), \
            end, summary
    if decision.verdict == Verdict.PASS:
        return Decision(Verdict.PASS, f"{count}; the last check passed: {decision.reason}",
                        decision.judgements), end, summary
    return Decision(Verdict.INCONCLUSIVE, f"{count}; the last check did not pass, so the step "
                    f"does not: {decision.reason}", decision.judgements), end, summary


def _judge(target: Target, client: m.Client, selector: m.MetricsSelector,
           config: AnalysisSettings, *, start: float,
           window: float, until_verdict: bool, deadline: float, check_every: float,
           segments: list[Segment], checks: list[dict],
           rollout_start: float | None = None) -> tuple[Decision, float]:
    """Judge [start, now] until FAIL, or PASS over at least `window`, or the deadline.

    FAIL may come early (the sequential judges are anytime-valid); PASS only once the window at
    this weight is covered; the window grows from a fixed start, so re-checking watches one
    stream of evidence instead of a sliding one. When the judges say the traffic cannot
    decide the step before the deadline, it ends early, INCONCLUSIVE.
    """
    interval = config.interval_seconds
    last: Decision | None = None
    while True:
        now = time.time()
        if not until_verdict and now < start + window:
            time.sleep(start + window - now)
            now = time.time()
        span = now - start
        if span >= MIN_SPAN_SECONDS:
            current = replace(config, window=format_duration(span),  # one check: no repeats
                              interval=format_duration(min(interval, span)),
                              until_verdict=False)
            last = run_analysis(target.prometheus, selector, current, end=now,
                                segments=segments, rollout_start=rollout_start,
                                deadline=deadline if until_verdict else None)
            covered = span >= window - 0.5
            checks.append(_check_record(last, start, now, covered))
            if last.verdict == Verdict.FAIL or (last.verdict == Verdict.PASS and covered):
                return last, now
            if _undecidable(last):
                return last, now
        if not until_verdict or now >= deadline:
            break
        time.sleep(max(0.0, min(check_every, deadline - now)))
    if last is None:
        return Decision(Verdict.INCONCLUSIVE, f"no data yet: only {span:.1f}s since the window "
                        "started", []), now
    if last.verdict == Verdict.PASS:  # the judges passed, but not over the whole window
        last = Decision(Verdict.INCONCLUSIVE, f"the judges passed over {span:.0f}s, less than "
                        f"the {format_duration(window)} window", last.judgements)
    elif until_verdict:
        last = Decision(last.verdict, f"still undecided at the end of max_duration: "
                        f"{last.reason}", last.judgements)
    return last, now


def _undecidable(decision: Decision) -> bool:
    """The error judge found the step cannot be decided at this traffic before its deadline
    (a dry-run one decides nothing, so it cannot end the step either)."""
    return any(j.judge == "error-rate-sequential" and not j.dry_run
               and j.evidence.get("decidable_in_budget") is False for j in decision.judgements)


def _fit_config(config: AnalysisSettings, result: runbook.RunbookResult, weight: int | None,
                share_known: bool) -> AnalysisSettings:
    """The analysis the current routing allows: the configured weight is the canary's share
    only without routes for matched users and mirrors; with all traffic on the canary there is
    no stable traffic to compare with, so only the threshold judges can decide."""
    if not share_known:
        if config.canary_weight is not None:
            result.notes.append(f"canary_weight {config.canary_weight:g} not taken as the "
                                   "canary's share of traffic")
        result.notes.append("routes for matched users or a mirror send the canary more "
                               "than its weight: the observed share stands in for it")
        return replace(config, canary_weight=None)
    if weight == 100:
        alone = [name for name in config.judges if name in ("success-rate", "latency")]
        fitted = replace(config, judges=alone, canary_weight=None,
                         dry_run_judges=[n for n in config.dry_run_judges if n in alone])
        if alone and alone != config.judges and fitted.deciding():
            result.notes.append("all traffic is on the canary: nothing to compare it with, "
                                   "so only " + ", ".join(alone) + " judge it")
            return fitted
        return replace(config, canary_weight=None)
    if config.canary_weight is None and weight is not None and 0 < weight < 100:
        return replace(config, canary_weight=float(weight))
    return config


def _settings(runbook_name: str, given: AnalysisSettings | Mapping[str, Any]
              ) -> AnalysisSettings:
    if isinstance(given, AnalysisSettings):
        return given.validate()
    return analysis_settings(runbook_name, dict(given))


@_phase
def analyze(target: Target, result: runbook.RunbookResult,
            settings: AnalysisSettings | Mapping[str, Any], *, canary_weight: float) -> Decision:
    """Judge the canary at its current weight, chaining evidence from earlier weights.

    `settings` is an AnalysisSettings or the run's parameters (its analysis settings are read,
    the rest of it ignored); `canary_weight` -1 reads the weight from the VirtualService.
    The window never reaches back before the last weight change (plus SETTLE_SECONDS): a run
    right after a shift waits until `window` at the new weight is covered (with
    `until_verdict` it checks every `check_every` meanwhile and may FAIL early). With
    `iterations` above 1 it judges that many windows one after the other and FAILs once
    `threshold` of them failed (`_iterate`).
    """
    config = _settings("analyze", settings)
    if canary_weight != -1:
        config = AnalysisSettings.from_dict({"canary_weight": canary_weight}, base=config)
    window_s = config.window_seconds
    limit = m.parse_window(config.max_duration, "max_duration")
    every = m.parse_window(config.check_every, "check_every")
    client = prometheus_client(target)
    selector = _selector(target, result, subset_versions(target, config.version_label_key))
    began = time.time()
    vs = _set_weights(target, result)
    weight = (result.weights or {}).get(target.canary)
    share_known = not router_of(target).diverted(vs)
    config = _fit_config(config, result, weight, share_known)
    state = read_state(vs)
    periods: list[WeightPeriod] = []
    if state is not None and target.audit_log.is_file():
        periods = weight_periods(audit.read_records(target.audit_log),
                                 virtual_service=istio.object_ref(vs),
                                 namespace=target.namespace, stable=target.stable,
                                 canary=target.canary, release=state.release,
                                 router=router_of(target))
    start = began - window_s
    segments: list[Segment] = []
    if periods and periods[-1].weight == weight:
        start = max(start, periods[-1].start + SETTLE_SECONDS)
        segments, skipped = period_segments(client, selector, periods)
        result.notes.extend(skipped)
        result.notes.append(f"evidence chained over {len(segments)} earlier weight "
                               f"period(s) of release {state.release}")
    else:
        why = ("no rollout in progress" if state is None else
               f"no audit records of release {state.release} in {target.audit_log}"
               if not periods else "the audit log disagrees with the VirtualService's weight")
        result.notes.append(f"evidence restarted at the current weight: {why}")
    checks: list[dict] = []
    decision, end, iterations = _iterate(target, client, selector, config, start=start,
                                         began=began, limit=limit, check_every=every,
                                         segments=segments, checks=checks,
                                         rollout_start=periods[0].start if periods else None)
    result.decision = decision.to_dict()
    result.evidence = {
        "window": {"start": times.timestamp(start), "end": times.timestamp(end),
                   "seconds": round(end - start, 3)},
        "weight_periods": [period.to_dict() for period in periods],
        "segments": [asdict(segment) for segment in segments],
        "checks": checks,
        "versions": _versions_evidence(selector),
    }
    if config.iterations > 1:
        result.evidence["iterations"] = iterations
        result.evidence["threshold"] = config.threshold
    result.metrics = _metric_rows(client, selector, start, end, config.interval_seconds)
    result.metrics += _template_rows(client, selector, config, start, end)
    return decision


@_phase
def shadow(target: Target, result: runbook.RunbookResult,
           settings: AnalysisSettings | Mapping[str, Any], *,
           percentage: float = default("shadow", "percentage"),
           keep_mirror: bool = default("shadow", "keep_mirror")) -> Decision:
    """Mirror `percentage` of requests to the canary and judge it on that copy (once, over the
    window of `settings`): users only ever get the stable answer, so a bad canary costs them
    nothing."""
    if (isinstance(percentage, bool) or not isinstance(percentage, int | float)
            or not 0 < percentage <= 100):
        raise BadInput("percentage", percentage, "must be a percentage above 0, at most 100")
    flag_parameter("keep_mirror", keep_mirror)
    config = _settings("shadow", settings)
    client = prometheus_client(target)
    router = router_of(target)
    objects = router.read()
    adopt_rollout(router, objects.route)  # its routes that move together
    selector = _selector(target, result, router.versions(objects, config.version_label_key))
    router.set_mirror(objects.route, percentage, objects.extra)  # refused before any write
    _ensure_rollout(target, result, objects)
    _apply(target, result, lambda route: router.set_mirror(route, percentage, objects.extra))
    start = time.time() + SETTLE_SECONDS
    checks: list[dict] = []
    decision, end = _judge(target, client, selector, config, start=start,
                           window=config.window_seconds,
                           until_verdict=False, deadline=start, check_every=1.0, segments=[],
                           checks=checks)
    result.decision = decision.to_dict()
    result.evidence = {"window": {"start": times.timestamp(start), "end": times.timestamp(end)},
                       "checks": checks, "versions": _versions_evidence(selector)}
    result.metrics = _metric_rows(client, selector, start, end, config.interval_seconds)
    result.metrics += _template_rows(client, selector, config, start, end)
    if not keep_mirror:
        _apply(target, result, router.clear_mirror)
    _set_weights(target, result)
    return decision


def judgement_table(decision: Decision) -> pd.DataFrame:
    """The decision's judgements as a table, for reading in the notebook."""
    import pandas as pd  # here: the other phases do without it

    columns = ["judge", "verdict", "critical", "required", "reason"]
    if any(j.dry_run for j in decision.judgements):  # said only where a judge is dry-run
        columns.insert(2, "dry_run")
    return pd.DataFrame(
        [{"judge": j.judge, "verdict": j.verdict.value, "critical": j.critical,
          "required": j.required, "reason": j.reason, "dry_run": j.dry_run}
         for j in decision.judgements], columns=columns)


