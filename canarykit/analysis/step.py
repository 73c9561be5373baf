"""One analysis step: Istio metrics from Prometheus -> judges -> one decision.

`run_analysis` fetches the window's counts once (requests, 5xx, histogram buckets: three
queries for all versions), the per-interval samples for the comparative judge (one range query
per compared metric) and the custom metrics (`custom_metrics`, and the plan's PromQL templates
`metrics`), runs the threshold, Mann-Whitney and sequential judges, records on each judgement
the PromQL it was given, marks those of `dry_run_judges` dry-run, and combines them with
`judges.decide`. Prometheus being unreachable or refusing is an INCONCLUSIVE decision that
names the URL, never an exception. `canarykit analyze` is `add_arguments` + `run`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import fields
from datetime import datetime
from typing import Any

from canarykit.analysis import judges, sequential, templates
from canarykit.analysis import metrics as m
from canarykit.analysis.settings import (
    CLI,
    AnalysisSettings,
    dispersion_value,
    read_config_file,
    setting_names,
    settings_from,
)
from canarykit.core import times
from canarykit.core.errors import BadInput, ExitCode

SEQUENTIAL_JUDGES = ("error-rate-sequential", "traffic-split", "latency-sequential")
# The judgements each judge setting makes (what `dry_run_judges` marks).
JUDGES_OF = {"success-rate": ("success-rate",), "latency": ("latency-p99",),
             "mann-whitney": ("mann-whitney",), "sequential": SEQUENTIAL_JUDGES}
LATEST_TIME = 253402300799.0  # 9999-12-31T23:59:59Z: the last time RFC 3339 can write


# ---------------------------------------------------------------- the analysis


def _inconclusive(name: str, reason: str, queries: list[str], thresholds: dict | None = None,
                  required: bool = True) -> judges.Judgement:
    return judges.Judgement(
        judge=name, verdict=judges.Verdict.INCONCLUSIVE, reason=reason, values={},
        thresholds=thresholds or {}, queries=list(queries), required=required,
        critical=name != "traffic-split",  # as sequential.traffic_split_test marks it
    )


def _counts(counts: m.RawCounts, version: str) -> dict[str, Any] | None:
    return counts.versions.get(version)


def run_analysis(
    settings: m.PrometheusSettings,
    selector: m.MetricsSelector,
    config: AnalysisSettings,
    *,
    end: datetime | float | None = None,
    segments: list[sequential.Segment] | None = None,
    rollout_start: float | None = None,
    deadline: float | None = None,
) -> judges.Decision:
    """Judge the canary over the window ending at `end` (default now).

    `segments` are earlier, disjoint periods of this rollout (each with its configured canary
    share); the sequential error-rate test chains their evidence with this window's. The
    clustering of stable's errors and latency is measured on its history before
    `rollout_start` (default: the start of the earliest segment or of the window). With a
    `deadline` (the step's budget) the error judge says INCONCLUSIVE early when the traffic
    cannot decide it in time. Bad input raises BadInput before any query; Prometheus
    problems give INCONCLUSIVE.
    """
    config.validate()
    selector.validate()
    settings.validate()
    finish = time.time() if end is None else m.to_unix(end, "at")
    window = config.window_seconds
    start = finish - window
    client = m.connect(settings)

    counts = m.raw_counts(client, selector, start, finish)
    count_queries = [outcome.query for outcome in counts.outcomes]
    problem = counts.failure
    if problem is not None:
        judgement = _inconclusive("prometheus", problem.message, count_queries)
        return judges.Decision(judges.Verdict.INCONCLUSIVE, problem.message, [judgement])

    stable, canary = _counts(counts, selector.stable), _counts(counts, selector.canary)
    missing = [selector.describe(role)
               for role, data in (("canary", canary), ("stable", stable)) if data is None]
    where = f"{selector.service} in namespace {selector.namespace}"
    missing_reason = (
        f"Prometheus at {settings.url} has no series for the {' or the '.join(missing)} of "
        f"{where} in the {config.window} window ending {times.timestamp(finish)}"
        if missing else ""
    )

    found: list[judges.Judgement] = []
    if "success-rate" in config.judges:
        found.append(_success_rate(canary, config, count_queries[:2], missing_reason))
    if "latency" in config.judges:
        found.append(_latency(client, selector, config, canary, finish, missing_reason))
    if "mann-whitney" in config.judges:
        few = _too_few(selector, config, stable, canary)
        if missing_reason or few:
            thresholds = {"confidence": config.confidence, "pass_score": config.pass_score,
                          "min_requests": config.min_requests}
            found.append(_inconclusive("mann-whitney", missing_reason or few, count_queries,
                                       thresholds))
        else:
            found.append(_mann_whitney(client, selector, config, start, finish))
    if "sequential" in config.judges:
        earliest = [seg.started_at for seg in segments or [] if seg.started_at is not None]
        history_end = rollout_start if rollout_start is not None else min([start, *earliest])
        found.extend(_sequential(client, selector, config, stable, canary, segments or [],
                                 count_queries, finish, missing_reason,
                                 history_end=history_end, deadline=deadline))
    dry = {judge for name in config.dry_run_judges for judge in JUDGES_OF[name]}
    for judgement in found:
        judgement.dry_run = judgement.judge in dry
    for metric in config.custom_metrics:
        found.append(_custom(client, selector, config, metric, finish))
    for template in config.metrics:
        found.append(templates.measure(client, template, selector, window_seconds=window,
                                       at=finish))
    decision = judges.decide(found)
    if missing_reason and decision.verdict == judges.Verdict.INCONCLUSIVE:
        decision.reason = missing_reason  # one sentence instead of the same one per judge
    return decision



def _success_rate(canary, config, queries, missing_reason) -> judges.Judgement:
    requests = canary["requests"] if canary else None
    # Each series is extrapolated on its own; never let 5xx exceed all requests.
    errors = min(canary["errors"], requests) if canary else None
    judgement = judges.check_success_rate(
        requests, errors,
        min_success_rate=config.min_success_rate,
        min_requests=config.min_requests,
    )
    if canary is None and missing_reason:
        judgement.reason = missing_reason
    judgement.queries = list(queries)
    return judgement


def _latency(client, selector, config, canary, finish, missing_reason) -> judges.Judgement:
    p99 = m.instant_metric(client, selector, "latency-p99", window_seconds=config.window_seconds,
                           at=finish)
    judgement = judges.check_latency(
        p99.get(selector.canary),
        max_ms=config.max_p99_ms,
        requests=canary["requests"] if canary else None,
        min_requests=config.min_requests,
    )
    if canary is None and missing_reason:
        judgement.reason = missing_reason
    elif p99.outcome.status.failed:
        judgement.reason = p99.outcome.message
    judgement.queries = [p99.outcome.query]
    return judgement


def _too_few(selector, config, stable, canary) -> str:
    """Why per-interval samples would be too thin to compare, or ''."""
    for role, data in (("canary", canary), ("stable", stable)):
        if data is not None and data["requests"] < config.min_requests:
            return (f"only {data['requests']:,.0f} {selector.describe(role)} requests, fewer "
                    f"than the {config.min_requests:,} needed to compare the versions")
    return ""


def _mann_whitney(client, selector, config, start, finish) -> judges.Judgement:
    interval = config.interval_seconds
    first = start + interval  # each point covers the interval before it: disjoint samples
    standard = [c.name for c in config.compare_metrics if c.name in m.STANDARD_METRICS]
    samples: dict[str, tuple[list[float], list[float]]] = {}
    queries: list[str] = []
    problems: list[str] = []
    if standard:
        frame = m.range_frame(client, selector, first, finish, step_seconds=interval,
                              metrics=standard)
        for outcome in frame.attrs["outcomes"]:
            queries.append(outcome.query)
            if outcome.status.failed:
                problems.append(outcome.message)
        for name in standard:
            samples[name] = (m.samples_by_version(frame, name, selector.stable),
                             m.samples_by_version(frame, name, selector.canary))
    custom = {metric.name: metric for metric in config.custom_metrics}
    for compare in config.compare_metrics:
        if compare.name in custom:
            pair = []
            for version in (selector.stable, selector.canary):
                values, outcome = m.custom_samples(
                    client, custom[compare.name], selector, version=version, start=first,
                    end=finish, step_seconds=interval)
                queries.append(outcome.query)
                pair.append(values)
            samples[compare.name] = (pair[0], pair[1])
    judgement = judges.compare_samples(
        samples, config.compare_metrics, confidence=config.confidence,
        pass_score=config.pass_score, marginal_score=config.marginal_score,
        min_samples=config.min_samples,
    )
    if judgement.verdict == judges.Verdict.INCONCLUSIVE and problems:
        judgement.reason = problems[0]
    judgement.queries = queries
    return judgement


def _dispersions(client: m.Client, selector: m.MetricsSelector, config: AnalysisSettings,
                 history_end: float) -> tuple[sequential.Dispersion, sequential.Dispersion,
                                              list[str]]:
    """The error and latency dispersion to temper the judges with: as configured, or measured
    on stable's own per-interval counts over `dispersion_history` before the rollout."""
    error_value = dispersion_value("error_dispersion", config.error_dispersion)
    latency_value = dispersion_value("latency_dispersion", config.latency_dispersion)
    if error_value is not None and latency_value is not None:
        return (sequential.configured_dispersion("error", error_value),
                sequential.configured_dispersion("latency", latency_value), [])
    import numpy as np  # here: only the sequential judges need it

    step = config.interval_seconds
    stable = selector.describe("stable") if selector.stable_subset else \
        f"stable {selector.stable}"
    history = (f"{stable}'s {config.dispersion_history} before "
               f"{times.timestamp(history_end)}")
    counts = m.interval_counts(client, selector, selector.stable,
                               history_end - config.dispersion_history_seconds + step,
                               history_end, step_seconds=step,
                               with_buckets=latency_value is None)
    queries = [outcome.query for outcome in counts.outcomes]
    if error_value is not None:
        error = sequential.configured_dispersion("error", error_value)
    else:
        found = float(sequential.count_dispersion(np.array(counts.requests),
                                                  np.array(counts.errors)))
        error = sequential.estimate_dispersion("error", found, history=history)
    if latency_value is not None:
        latency = sequential.configured_dispersion("latency", latency_value)
    else:
        found = (float(sequential.latency_dispersion(np.array(counts.buckets)))
                 if counts.buckets else math.nan)
        latency = sequential.estimate_dispersion("latency", found, history=history)
    return error, latency, queries


def _sequential(client, selector, config, stable, canary, earlier, count_queries, finish,
                missing_reason, *, history_end: float,
                deadline: float | None) -> list[judges.Judgement]:
    thresholds = {"alpha": config.alpha, "canary_weight": config.canary_weight}
    known_split = config.canary_weight is not None
    if stable is None or canary is None:
        return [_inconclusive(name, missing_reason, count_queries, thresholds,
                              required=known_split or name != "traffic-split")
                for name in SEQUENTIAL_JUDGES]
    total = stable["requests"] + canary["requests"]
    if config.canary_weight is not None:
        share = config.canary_weight / 100
    elif 0 < canary["requests"] < total:
        share = canary["requests"] / total
    else:
        share = None
    if share is None:
        reason = (f"cannot judge sequentially: the canary served {canary['requests']:.0f} of "
                  f"{total:.0f} requests and no canary weight is configured")
        return [_inconclusive(name, reason, count_queries, thresholds,
                              required=known_split or name != "traffic-split")
                for name in SEQUENTIAL_JUDGES]
    current = sequential.Segment(
        canary_share=share,
        stable_requests=int(round(stable["requests"])),
        stable_errors=int(round(stable["errors"])),
        canary_requests=int(round(canary["requests"])),
        canary_errors=int(round(canary["errors"])),
        started_at=finish - config.window_seconds,
    )
    error_spread, latency_spread, history_queries = _dispersions(client, selector, config,
                                                                 history_end)
    found = sequential.judge_sequential(
        [*earlier, current], stable["buckets"], canary["buckets"], alpha=config.alpha,
        error_tolerance=config.error_tolerance, latency_tolerance=config.latency_tolerance,
        min_requests=config.min_requests, error_dispersion=error_spread,
        latency_dispersion=latency_spread,
        remaining_seconds=None if deadline is None else max(0.0, deadline - finish),
        canary_rate=canary["requests"] / config.window_seconds,
    )
    for judgement in found:
        judgement.queries = list(count_queries) + history_queries
        if judgement.judge == "traffic-split" and config.canary_weight is None:
            # With the observed share standing in for the configured one, the split is
            # not tested; this says so instead of passing vacuously.
            judgement.verdict = judges.Verdict.INCONCLUSIVE
            judgement.required = False
            judgement.reason = (
                f"traffic split not tested: no canary weight configured; the observed canary "
                f"share {share:.1%} stands in for it"
            )
    return found


def _custom(client, selector, config, metric: m.CustomMetric, finish) -> judges.Judgement:
    result = m.custom_value(client, metric, selector, version=selector.canary,
                            window_seconds=config.window_seconds, at=finish)
    judgement = judges.check_metric_range(metric.name, result.value, min_value=metric.min_value,
                                          max_value=metric.max_value)
    judgement.critical = metric.critical
    if result.value is None and result.problem:
        judgement.reason = f"custom metric {metric.name}: {result.problem}"
    judgement.queries = [result.outcome.query]
    return judgement


# ---------------------------------------------------------------- the CLI


def parse_time(text: str, field_name: str = "--at") -> float:
    """Unix seconds from an RFC 3339 time (with offset or Z) or a Unix timestamp."""
    value = (text or "").strip()
    try:
        number = float(value)
    except ValueError:
        number = None
    if number is not None:
        if not math.isfinite(number) or not 0 <= number <= LATEST_TIME:
            raise BadInput(field_name, _cut(text), "must be an RFC 3339 time or Unix seconds "
                           "between 1970 and 9999")
        return number
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        parsed = None
    if parsed is None or "T" not in value.upper() and " " not in value or parsed.tzinfo is None:
        raise BadInput(
            field_name, _cut(text),
            "must be an RFC 3339 time with an offset, like 2024-05-01T12:00:00Z, or Unix seconds",
        )
    try:
        stamp = parsed.timestamp()
    except (OverflowError, ValueError, OSError):  # 0001-01-01T00:00:00+01:00 is before year 1
        stamp = -1.0
    if not 0 <= stamp <= LATEST_TIME:
        raise BadInput(field_name, _cut(text), "must be a time between 1970 and 9999")
    return stamp


def _cut(text: Any, limit: int = 80) -> Any:
    return text[:limit] + "..." if isinstance(text, str) and len(text) > limit else text


def _default(cls: type, name: str) -> Any:
    """A dataclass field's default, so a flag never repeats it."""
    return next(item.default for item in fields(cls) if item.name == name)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `canarykit analyze`; their defaults are those of the selector and settings."""
    selector, prometheus = m.MetricsSelector, m.PrometheusSettings
    stable, canary = _default(selector, "stable"), _default(selector, "canary")
    parser.add_argument("service", metavar="SERVICE",
                        help="the service: NAME (with -n) or NAME.NAMESPACE.svc.cluster.local")
    parser.add_argument("-n", "--namespace",
                        help="the service's namespace (default: the one its FQDN names)")
    parser.add_argument("--prometheus", required=True, metavar="URL", help="Prometheus base URL")
    parser.add_argument("--stable", help=f"stable version label value (default {stable})")
    parser.add_argument("--canary", help=f"canary version label value (default {canary})")
    parser.add_argument("--stable-subset", metavar="SUBSET",
                        help="instead of --stable: the DestinationRule subset, whose version "
                             "is read from the cluster (see --version-label-key)")
    parser.add_argument("--canary-subset", metavar="SUBSET",
                        help="instead of --canary: the canary's DestinationRule subset")
    parser.add_argument("--kubeconfig", help="with subsets: kubeconfig file (default: "
                        "$KUBECONFIG or ~/.kube/config)")
    parser.add_argument("--context", help="with subsets: kubeconfig context")
    parser.add_argument("--at", metavar="TIME",
                        help="end of the window: RFC 3339 or Unix seconds (default now)")
    parser.add_argument("--output", choices=("text", "json"), default="text")
    parser.add_argument("--config", metavar="FILE",
                        help="YAML analysis settings (any setting below, metrics, compare_metrics, "
                             "custom_metrics); flags override it")
    _add_setting_flags(parser)
    parser.add_argument("--reporter", choices=("destination", "source"),
                        default=_default(selector, "reporter"))
    parser.add_argument("--version-label", default=_default(selector, "version_label"))
    parser.add_argument("--fqdn", action="store_true",
                        help="select by destination_service FQDN instead of name + namespace")
    parser.add_argument("--bearer-token-env", metavar="VAR", help="env var holding a bearer token")
    parser.add_argument("--bearer-token-file", metavar="FILE", help="file holding a bearer token")
    parser.add_argument("--basic-auth-user", metavar="USER")
    parser.add_argument("--basic-auth-password-env", metavar="VAR",
                        help="env var holding the basic auth password")
    parser.add_argument("--ca-file", metavar="FILE", help="CA bundle for https")
    parser.add_argument("--insecure", action="store_true", help="skip TLS verification")
    parser.add_argument("--header", action="append", default=[], metavar="NAME=VALUE",
                        help="extra HTTP header (repeatable)")
    parser.add_argument("--timeout", type=float, metavar="SECONDS",
                        default=_default(prometheus, "timeout_seconds"))


def _add_setting_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per analysis setting the CLI takes, its help and default from the model."""
    defaults = AnalysisSettings()
    for item in fields(AnalysisSettings):
        if CLI not in item.metadata["where"] or item.name.endswith("metrics"):
            continue  # the metric lists are set in --config FILE only
        default = getattr(defaults, item.name)
        kind = {"int": int, "float": float, "float | None": float}.get(item.type, str)
        shown = "none" if default in (None, []) else (
            ",".join(default) if isinstance(default, list) else f"{default:g}"
            if isinstance(default, float) else default)
        parser.add_argument("--" + item.name.replace("_", "-"), type=kind,
                            help=f"{item.metadata['help']} (default {shown})")


def _config_from_args(args: argparse.Namespace) -> AnalysisSettings:
    data: dict[str, Any] = read_config_file(args.config) if args.config else {}
    for name in setting_names(CLI):
        value = getattr(args, name, None)
        if value is not None:
            data[name] = value
    return settings_from(data, where=CLI)


def _headers(items: list[str]) -> dict[str, str]:
    headers = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise BadInput("--header", item, "must be NAME=VALUE")
        headers[name.strip()] = value.strip()
    return headers


def build_inputs(args: argparse.Namespace):
    """Settings, selector, config and end time from the flags; BadInput on anything wrong."""
    settings = m.PrometheusSettings(
        url=args.prometheus,
        bearer_token_env=args.bearer_token_env,
        bearer_token_file=args.bearer_token_file,
        basic_auth_user=args.basic_auth_user,
        basic_auth_password_env=args.basic_auth_password_env,
        ca_file=args.ca_file,
        insecure=args.insecure,
        headers=_headers(args.header),
        timeout_seconds=args.timeout,
    ).validate()
    config = _config_from_args(args)
    found = _versions(args, config.version_label_key)  # may take the context's namespace
    selector = m.MetricsSelector(
        service=args.service, namespace=args.namespace or "", reporter=args.reporter,
        version_label=args.version_label, use_fqdn=args.fqdn, **found,
    ).validate()
    end = parse_time(args.at) if args.at is not None else None
    return settings, selector, config, end


def _versions(args: argparse.Namespace, label_key: str) -> dict[str, str]:
    """The selector's stable and canary versions: as given, or read from the subsets of the
    service's DestinationRule (a subset's name is not the version its metrics carry)."""
    subsets = args.stable_subset, args.canary_subset
    if label_key and not any(subsets):
        raise BadInput("--version-label-key", label_key, "says which label of a subset holds "
                       "its version: give --stable-subset and --canary-subset")
    if not any(subsets):
        return {name: _default(m.MetricsSelector, name) if value is None else value
                for name, value in (("stable", args.stable), ("canary", args.canary))}
    for flag, subset, version in (("--stable-subset", subsets[0], args.stable),
                                  ("--canary-subset", subsets[1], args.canary)):
        if not subset:
            raise BadInput(flag, subset, "is required with the other subset flag")
        if version is not None:
            raise BadInput(flag, subset, f"and --{flag[2:8]} {version} both name the "
                           f"{flag[2:8]} version: give one")
    from canarykit.cluster import client as cluster  # here: only subsets need the cluster
    from canarykit.core import names
    from canarykit.mesh import versions

    namespace = names.service_namespace("SERVICE", args.service, args.namespace, "--namespace")
    kube = cluster.connect(args.kubeconfig, args.context, namespace)
    dr = cluster.find_destination_rule(kube, args.service)
    stable, canary = versions.subset_versions(dr, subsets[0], subsets[1], label_key)
    if namespace is None:
        args.namespace = kube.namespace  # the context's, as kubectl takes it
    for role, item in (("stable", stable), ("canary", canary)):
        if not item.label:
            print(f"canarykit analyze: note: {item.describe(role)}", file=sys.stderr)
    return {"stable": stable.version, "canary": canary.version,
            "stable_subset": stable.subset, "canary_subset": canary.subset}


def exit_code(verdict: judges.Verdict) -> ExitCode:
    return {judges.Verdict.PASS: ExitCode.OK, judges.Verdict.FAIL: ExitCode.FAILED}.get(
        verdict, ExitCode.INCONCLUSIVE)


def _show(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if value is None:
        return "-"
    return json.dumps(value) if isinstance(value, (dict, list)) else str(value)


def format_text(decision: judges.Decision) -> str:
    """A small table per judge, then the decision line."""
    lines = []
    for judgement in decision.judgements:
        roles = (("critical", judgement.critical), ("required", judgement.required))
        flags = ", ".join(word for word, on in roles if on) or "advisory"
        if judgement.dry_run:
            flags = "dry-run, does not decide"
        lines.append(f"{judgement.judge}: {judgement.verdict.value} ({flags})")
        lines.append(f"  reason      {judgement.reason}")
        if judgement.values:
            lines.append("  values      " + ", ".join(
                f"{key}={_show(value)}" for key, value in judgement.values.items()))
        if judgement.thresholds:
            lines.append("  thresholds  " + ", ".join(
                f"{key}={_show(value)}" for key, value in judgement.thresholds.items()))
        lines.append("")
    lines.append(f"decision: {decision.verdict.value} \u2014 {decision.reason}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """`canarykit analyze`: 0 PASS, 1 FAIL, 3 INCONCLUSIVE, 2 bad input."""
    try:
        settings, selector, config, end = build_inputs(args)
        decision = run_analysis(settings, selector, config, end=end)
    except BadInput as exc:
        print(f"canarykit analyze: {exc}", file=sys.stderr)
        return ExitCode.BAD_INPUT
    if args.output == "json":
        print(json.dumps(decision.to_dict(), indent=2, sort_keys=True))
    else:
        window_end = times.timestamp(end) if end is not None else "now"
        print(f"{selector.service}.{selector.namespace}: {selector.describe('canary')} vs "
              f"{selector.describe('stable')}, {config.window} window ending {window_end} "
              f"({config.interval} intervals)\n")
        print(format_text(decision))
    return exit_code(decision.verdict)
