"""The rollout plan: a YAML file saying what to roll out and how, expanded into phases.

A plan names the service, its stable and canary subsets, where Prometheus is (names of
environment variables or files, never a secret), the steps (internal canary, shadow, weights,
blue-green, approve, promote), the analysis run after each step, the INCONCLUSIVE policy, the
report folder, the notification channels and the webhooks. `load_plan` refuses a bad plan with
one BadInput naming the field path (e.g. `steps[2].weight`); `expand` turns the steps into the
ordered phases the driver executes, each a runbook notebook with its papermill parameters (or
a gate the driver waits at).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from canarykit.analysis import metrics
from canarykit.analysis.settings import MAX_DURATION_SECONDS, PLAN, AnalysisSettings
from canarykit.core import names, yamlsafe
from canarykit.core.durations import parse_duration
from canarykit.core.errors import BadInput
from canarykit.mesh.istio import CLAIM_HEADER
from canarykit.notify.channels import Channel, parse_channels
from canarykit.notify.hooks import Hook, parse_hooks
from canarykit.rollout import runbook
from canarykit.rollout.parameters import analysis_values, default
from canarykit.routers import check_router
from canarykit.storage import records

STEP_KINDS = ("internal-canary", "shadow", "weight", "blue-green", "policy", "fault-rehearsal",
              "approve", "promote")
POLICY_KINDS = ("policy", "fault-rehearsal")  # settings of mesh.policy, checked there
INCONCLUSIVE_ACTIONS = ("rollback",)  # never promote on missing data
APPROVAL_TIMEOUT_ACTIONS = ("rollback", "hold")  # hold: keep waiting for a person
# What each step kind may set (beside `analysis` and `pause`), with the type it must have.
STEP_SETTINGS: dict[str, dict[str, type | tuple[type, ...]]] = {
    "internal-canary": {"header": str, "header_value": str, "header_match": str,
                        "cookie_name": str, "cookie_value": str, "query_parameter": str,
                        "query_value": str, "source_labels": dict},
    "shadow": {"percentage": (int, float), "window": str, "keep_mirror": bool},
    "blue-green": {"to_subset": str},
    "approve": {"timeout": str, "on_timeout": str, "check_every": str},
    "promote": {"move_routes": bool},
}
# What an internal-canary step matches on, each its own route (routers.istio.INTERNAL_ROUTES)
INTERNAL_MATCHES = ("header", "cookie_name", "query_parameter", "source_labels")
APPROVE_DEFAULTS = {"timeout": "24h", "on_timeout": "rollback", "check_every": "1m"}
NO_ANALYSIS = ("approve", "promote", "policy")  # steps that move no traffic: nothing to judge


@dataclass
class PrometheusRef:
    url: str = ""  # "" = $CANARYKIT_PROMETHEUS_URL; required where metrics are read
    bearer_token_env: str = ""  # NAME of the environment variable holding the token


@dataclass
class MetricsSource:
    """Whose Istio series a release reads and which label tells its versions apart ("": the
    router's: destination_version for Istio subsets, destination_service_name for Gateway API
    backends; e.g. destination_workload, or a waypoint's `reporter: waypoint` in ambient)."""

    reporter: str = "destination"
    version_label: str = ""


@dataclass
class PreflightSettings:
    baseline_window: str = default("preflight", "baseline_window")
    min_baseline_success_rate: float = default("preflight", "min_baseline_success_rate")


@dataclass
class InconclusivePolicy:
    """On INCONCLUSIVE, analyse again up to `hold_steps` times, then `then` (roll back)."""

    hold_steps: int = 2
    then: str = "rollback"


@dataclass
class Step:
    """One plan step: its kind, the kind's settings, the analysis after it, the pause after."""

    kind: str
    settings: dict[str, Any] = field(default_factory=dict)
    analysis: AnalysisSettings | None = None  # None: no analysis after this step
    pause: str = "0s"

    def to_dict(self) -> dict[str, Any]:
        value: Any = self.settings.get("weight") if self.kind == "weight" else self.settings
        out: dict[str, Any] = {self.kind: value}
        if self.kind not in NO_ANALYSIS:
            out["analysis"] = self.analysis.to_dict(PLAN) if self.analysis else False
        out["pause"] = self.pause
        return out


@dataclass
class Plan:
    service: str
    namespace: str = "default"
    stable: str = "v1"
    canary: str = "v2"
    router: str = ""  # istio, gateway-api; "" = detected from what routes the service
    routes: list[str] = field(default_factory=list)  # moving together; [] = the canary route
    kubeconfig: str = ""  # a path; "" = as kubectl: $KUBECONFIG, ~/.kube/config, in-cluster
    context: str = ""
    release: str = ""  # "" = CANARY-TIMESTAMP, chosen when the release starts
    reports: str = "reports"
    pause: str = "0s"  # default wait after preflight and after each step
    prometheus: PrometheusRef = field(default_factory=PrometheusRef)
    metrics: MetricsSource = field(default_factory=MetricsSource)
    preflight: PreflightSettings = field(default_factory=PreflightSettings)
    inconclusive: InconclusivePolicy = field(default_factory=InconclusivePolicy)
    analysis: AnalysisSettings = field(default_factory=AnalysisSettings)
    steps: list[Step] = field(default_factory=list)
    notifications: list[Channel] = field(default_factory=list)
    webhooks: list[Hook] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if not self.router:
            del out["router"]  # so a plan written before routers existed keeps its digest
        if self.metrics == MetricsSource():
            del out["metrics"]  # likewise
        if not self.routes:
            del out["routes"]  # likewise
        out["analysis"] = self.analysis.to_dict(PLAN)
        out["steps"] = [step.to_dict() for step in self.steps]
        out["notifications"] = [channel.to_dict() for channel in self.notifications]
        out["webhooks"] = [hook.to_dict() for hook in self.webhooks]
        return out

    def hooks(self, kind: str) -> list[Hook]:
        return [hook for hook in self.webhooks if hook.kind == kind]

    def digest(self) -> str:
        """Identifies the plan's content, so a scheduled runner notices a changed plan."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


@dataclass
class PhaseSpec:
    """One phase to execute: a runbook notebook and its parameters (beside the common ones)."""

    name: str  # slug, used in the notebook's file name: NN-NAME.ipynb
    runbook: str  # file stem under runbooks/
    parameters: dict[str, Any] = field(default_factory=dict)
    step: int | None = None  # index into plan.steps (None: preflight, the final promote)
    judged: bool = False  # records a verdict the driver acts on
    pause: float = 0.0  # seconds to wait after it before the next phase
    gate: str = ""  # "approve" or "confirm-promotion": the driver waits, no notebook runs


# ---------------------------------------------------------------- loading


SHOWN = 80  # characters of a value or a field path an error may show
# A plan is a short file a person writes: beyond these it is a mistake (or an attack), refused
# before its size could make loading, checking and expanding it take long.
MAX_PLAN_CHARACTERS = 1_000_000
MAX_STEPS = 100


def load_plan(path: str | Path) -> Plan:
    """Read and validate a plan file; BadInput names the field path of the first problem."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise BadInput("PLAN", _cut(str(path)), f"cannot be read ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise BadInput("PLAN", _cut(str(path)), "is not UTF-8 text") from None
    if len(text) > MAX_PLAN_CHARACTERS:
        raise BadInput("PLAN", f"{len(text):,} characters",
                       f"is too large for a plan (at most {MAX_PLAN_CHARACTERS:,})")
    # Duplicate keys (two `steps:`), alias bombs and deep nesting are refused here.
    return parse_plan(yamlsafe.load(text, "PLAN"))


def parse_plan(data: Any) -> Plan:
    """A Plan from parsed YAML, refusing credentials first so no error message echoes one.

    Every refusal is one BadInput whose field path and value are cut to a readable length."""
    try:
        return _parse_plan(data)
    except BadInput as exc:
        raise BadInput(_cut(exc.field), _shown(exc.value), _cut(exc.problem, 400)) from None


def _cut(text: str, limit: int = SHOWN) -> str:
    """A field path or text as an error shows it: on one line (escapes visible), cut."""
    text = text[:limit + 1]
    if not text.isprintable():
        text = json.dumps(text)[1:-1]
    return text if len(text) <= limit else text[:limit] + "..."


def _shown(value: Any) -> Any:
    """The value itself when its repr is short, else its repr cut (a plan can hold megabytes)."""
    if isinstance(value, str):
        return _cut(value)
    text = repr(value)
    return value if len(text) <= SHOWN else text[:SHOWN] + "..."


def _parse_plan(data: Any) -> Plan:
    if not isinstance(data, dict):
        raise BadInput("plan", type(data).__name__, "must be a mapping of plan settings")
    if isinstance(data.get("steps"), list) and len(data["steps"]) > MAX_STEPS:  # shows no value
        raise BadInput("steps", f"{len(data['steps']):,} steps",
                       f"must be at most {MAX_STEPS} steps")
    refuse_secrets(data)
    values = dict(data)
    _known("", values, Plan.__dataclass_fields__)
    if "service" not in values:
        raise BadInput("service", None, "is required: the service to roll out")
    plan = Plan(service=_text("service", values["service"]))
    for name in ("namespace", "stable", "canary", "router", "kubeconfig", "context", "release",
                 "reports", "pause"):
        if name in values:
            setattr(plan, name, _text(name, values[name]))
    # `service: reviews.prod.svc.cluster.local` names its namespace; the plan keeps the short
    # name, which the driver's Lease, the release folders and the metrics are named after.
    plan.service, namespace = names.split_service("service", plan.service,
                                                  values.get("namespace"))
    plan.namespace = namespace or plan.namespace
    for name in ("namespace", "stable", "canary"):
        names.check_dns_label(name, getattr(plan, name))
    if plan.stable == plan.canary:
        raise BadInput("canary", plan.canary, "must differ from the stable subset")
    check_router("router", plan.router)
    if "routes" in values:
        raw = values["routes"]
        if not isinstance(raw, list) or not all(isinstance(r, str) for r in raw):
            raise BadInput("routes", raw, "must be a list of route names, e.g. [api, "
                           "api-internal]")
        from canarykit.rollout.target import route_names

        plan.routes = list(route_names("routes", ",".join(raw)))
    if plan.release and not names.is_dns1123_label(plan.release.lower()):
        raise BadInput("release", plan.release, "must be a folder name of letters, digits and "
                       "'-' (a DNS-1123 label, upper case allowed)")
    if not plan.reports:
        raise BadInput("reports", plan.reports, "must be a folder path or a storage URL")
    if records.is_url(plan.reports):
        records.check_url("reports", plan.reports, installed=False)
    _duration("pause", plan.pause)
    plan.prometheus = PrometheusRef(**_section("prometheus", values, PrometheusRef))
    if plan.prometheus.url:  # refused now, not after a release folder was made
        metrics.check_url("prometheus.url", plan.prometheus.url)
    if plan.prometheus.bearer_token_env and not names.is_env_name(
            plan.prometheus.bearer_token_env):
        raise BadInput("prometheus.bearer_token_env", plan.prometheus.bearer_token_env,
                       "must be the NAME of an environment variable")
    plan.metrics = MetricsSource(**_section("metrics", values, MetricsSource))
    metrics.check_metrics_source(plan.metrics.reporter, plan.metrics.version_label, "metrics.")
    plan.preflight = _preflight(values)
    plan.inconclusive = _inconclusive(values)
    plan.analysis = parse_analysis("analysis", values.get("analysis", {}), AnalysisSettings())
    plan.steps = _steps(values.get("steps"), plan)
    plan.notifications = parse_channels(values.get("notifications"), "notifications")
    plan.webhooks = parse_hooks(values.get("webhooks"), "webhooks")
    return plan


def refuse_secrets(data: Any) -> None:
    """Refuse any value or key that looks like a credential (it would land in notebooks)."""
    runbook.check_parameters(dict(_flatten("", data)))


def _flatten(prefix: str, value: Any):
    """(path, scalar) for every scalar; iterative, so any depth the loader allows is fine."""
    stack = [(prefix, value)]
    while stack:
        path, item = stack.pop()
        if isinstance(item, dict):
            stack.extend(reversed([(f"{path}.{key}" if path else str(key), child)
                                   for key, child in item.items()]))
        elif isinstance(item, list):
            stack.extend(reversed([(f"{path}[{index}]", child)
                                   for index, child in enumerate(item)]))
        else:
            yield path, item


def _known(path: str, values: dict[str, Any], known: Any) -> None:
    for key in values:
        if key not in known:
            where = f"{path}.{key}" if path else str(key)
            raise BadInput(where, values[key],
                           f"is not a plan setting (known: {', '.join(sorted(known))})")


def _text(path: str, value: Any) -> str:
    if not isinstance(value, str):
        raise BadInput(path, value, "must be a string")
    return value


def _duration(path: str, value: Any) -> float:
    seconds = parse_duration(_text(path, value), path)
    if seconds < 0:
        raise BadInput(path, value, "must not be negative")
    if seconds > MAX_DURATION_SECONDS:
        raise BadInput(path, value, "must be at most 2562047h (the longest Go duration)")
    return seconds


def _number(path: str, value: Any, low: float, high: float | None, *,
            whole: bool = False, open_low: bool = False) -> float:
    kinds = int if whole else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) \
            or isinstance(value, float) and not math.isfinite(value):
        raise BadInput(path, value, "must be a whole number" if whole else "must be a number")
    too_low = value <= low if open_low else value < low
    if too_low or (high is not None and value > high):
        bound = f"above {low:g}" if open_low else f"at least {low:g}"
        raise BadInput(path, value, f"must be {bound}" + (f" and at most {high:g}"
                                                          if high is not None else ""))
    return value


def _section(path: str, values: dict[str, Any], cls: Any) -> dict[str, Any]:
    raw = values.get(path) or {}
    if not isinstance(raw, dict):
        raise BadInput(path, raw, "must be a mapping")
    _known(path, raw, cls.__dataclass_fields__)
    for key, value in raw.items():
        if cls.__dataclass_fields__[key].type == "str":
            _text(f"{path}.{key}", value)
    return dict(raw)


def _preflight(values: dict[str, Any]) -> PreflightSettings:
    raw = _section("preflight", values, PreflightSettings)
    settings = PreflightSettings(**raw)
    _duration("preflight.baseline_window", settings.baseline_window)
    _number("preflight.min_baseline_success_rate", settings.min_baseline_success_rate, 0, 100)
    return settings


def _inconclusive(values: dict[str, Any]) -> InconclusivePolicy:
    policy = InconclusivePolicy(**_section("inconclusive", values, InconclusivePolicy))
    _number("inconclusive.hold_steps", policy.hold_steps, 0, 100, whole=True)
    if policy.then not in INCONCLUSIVE_ACTIONS:
        raise BadInput("inconclusive.then", policy.then,
                       "must be rollback (a rollout never promotes on missing data)")
    return policy


def parse_analysis(path: str, raw: Any, base: AnalysisSettings) -> AnalysisSettings:
    """`base` with the settings in `raw` applied, checked by the settings model."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise BadInput(path, raw, "must be a mapping of analysis settings (or false for none)")
    return AnalysisSettings.from_dict(raw, base=base, where=PLAN, path=path)


def _steps(raw: Any, plan: Plan) -> list[Step]:
    if not isinstance(raw, list) or not raw:
        raise BadInput("steps", raw, "must be a list of at least one step")
    if len(raw) > MAX_STEPS:
        raise BadInput("steps", f"{len(raw):,} steps", f"must be at most {MAX_STEPS} steps")
    steps = []
    for index, item in enumerate(raw):
        path = f"steps[{index}]"
        if steps and steps[-1].kind == "promote":
            raise BadInput(path, item, "comes after promote, which ends the rollout")
        steps.append(_step(path, item, plan))
        if steps[-1].kind == "fault-rehearsal" and "route" not in steps[-1].settings:
            plan.steps = steps
            if not _rehearsal_route(plan, index):
                raise BadInput(f"{path}.fault-rehearsal", item["fault-rehearsal"],
                               "a fault rehearsal runs against the canary only: put an "
                               "internal-canary step before it, or name a `route` that sends "
                               "only to the canary")
    return steps


def _step(path: str, item: Any, plan: Plan) -> Step:
    if not isinstance(item, dict):
        raise BadInput(path, item, f"must be a mapping naming one of {', '.join(STEP_KINDS)}")
    kinds = [k for k in item if k in STEP_KINDS]
    if len(kinds) != 1:
        raise BadInput(path, sorted(item, key=str),
                       f"must name exactly one of {', '.join(STEP_KINDS)}")
    kind = kinds[0]
    extra = sorted(set(item) - {kind, "analysis", "pause"}, key=str)
    if extra:
        raise BadInput(f"{path}.{extra[0]}", item[extra[0]],
                       "is not a step setting (known: analysis, pause and the step kind)")
    step = Step(kind=kind, pause=plan.pause)
    if "pause" in item:
        step.pause = _text(f"{path}.pause", item["pause"])
        _duration(f"{path}.pause", step.pause)
    if kind == "weight":
        weight = _number(f"{path}.weight", item[kind], 0, 100, whole=True, open_low=True)
        step.settings = {"weight": int(weight)}
    elif kind in POLICY_KINDS:
        step.settings = _policy_settings(f"{path}.{kind}", kind, item[kind], plan)
    else:
        step.settings = _step_settings(f"{path}.{kind}", kind, item[kind], plan)
    if kind in NO_ANALYSIS:
        if "analysis" in item:
            raise BadInput(f"{path}.analysis", item["analysis"], f"does not apply to {kind}")
        return step
    raw_analysis = item.get("analysis", {})
    if raw_analysis is False:
        if kind in ("shadow", "fault-rehearsal"):
            raise BadInput(f"{path}.analysis", False, f"a {kind} step always judges the canary")
        return step
    if isinstance(raw_analysis, dict) and raw_analysis.get(
            "version_label_key", plan.analysis.version_label_key) != \
            plan.analysis.version_label_key:
        raise BadInput(f"{path}.analysis.version_label_key", raw_analysis["version_label_key"],
                       "names the subsets' version label for the whole release: set it in "
                       "the plan's analysis section")
    step.analysis = parse_analysis(f"{path}.analysis", raw_analysis, plan.analysis)
    if kind == "shadow":  # a shadow step judges once, while it mirrors
        for name in ("iterations", "threshold"):
            if getattr(step.analysis, name) != 1 and isinstance(raw_analysis, dict) \
                    and name in raw_analysis:
                raise BadInput(f"{path}.analysis.{name}", raw_analysis[name],
                               "a shadow step judges once; repeat checks in a weight step")
    if "window" in step.settings:  # the shadow step's own window, checked with its analysis
        parse_analysis(f"{path}.{kind}", {"window": step.settings["window"]}, step.analysis)
    return step


def _policy_settings(path: str, kind: str, raw: Any, plan: Plan) -> dict[str, Any]:
    """A policy or fault-rehearsal step's settings, each value checked as the runbook will
    (on a stand-in VirtualService and DestinationRule), so a bad one stops the plan at load."""
    from canarykit.mesh import policy

    if not isinstance(raw, dict):
        raise BadInput(path, raw, "must be a mapping of traffic policy settings")
    values = {k: v for k, v in raw.items() if k not in policy.PLACES}
    for key in ("route", "subset"):
        if key in raw and (not isinstance(raw[key], str) or not raw[key]):
            raise BadInput(f"{path}.{key}", raw[key], "must be a non-empty name")
    clear = policy.check_clear(raw.get("clear", []), f"{path}.clear")
    if kind == "fault-rehearsal":
        if clear:
            raise BadInput(f"{path}.clear", raw["clear"], "a fault rehearsal clears its fault "
                           "itself after the analysis")
        for key in values:
            if key not in policy.BY_NAME or policy.BY_NAME[key].group != "fault":
                raise BadInput(f"{path}.{key}", values[key], "is not a fault setting (settings: "
                               + ", ".join(s.name for s in policy.SETTINGS
                                           if s.group == "fault") + ")")
        if not values:
            raise BadInput(path, raw, "give fault_delay and/or fault_abort")
    policy.check_settings(values, clear, "plan", f"{path}.")
    try:
        values = {k: policy.parse_text(k, v, "plan") if isinstance(v, str) else v
                  for k, v in values.items()}
    except BadInput as err:
        raise BadInput(f"{path}.{err.field}", err.value, err.problem) from None
    stand_in = _stand_in(plan, raw.get("subset"), raw.get("route"))
    if plan.router == "gateway-api":
        from canarykit.routers.gateway_api import GatewayRouter

        check = GatewayRouter(None, plan.service, plan.stable, plan.canary,  # type: ignore
                              tuple(plan.routes))
        check.policy_changes(stand_in, values, clear, naming="plan", prefix=f"{path}.",
                             route=raw.get("route"), subset=raw.get("subset"))
    else:
        policy.istio_changes(stand_in.route, stand_in.extra, values, clear,
                             route=raw.get("route"), routes=tuple(plan.routes),
                             subset=raw.get("subset"),
                             stable=plan.stable, canary=plan.canary, prefix=f"{path}.")
    settings = {**values, **{k: raw[k] for k in ("route", "subset") if k in raw}}
    if clear:
        settings["clear"] = ",".join(clear)
    return settings


def _stand_in(plan: Plan, subset: str | None, route: str | None) -> Any:
    """The smallest objects a policy applies to: a canary route (named `route`) and the
    plan's subsets (and `subset`)."""
    from canarykit.routers import Objects

    named = list(dict.fromkeys([*([route] if route else []), *plan.routes])) or [None]
    if plan.router == "gateway-api":
        backends = [{"name": plan.stable, "port": 80, "weight": 100},
                    {"name": plan.canary, "port": 80, "weight": 0}]
        rules = [{"backendRefs": backends, **({"name": name} if name else {})}
                 for name in named]
        return Objects({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
                        "metadata": {"name": "plan", "namespace": "plan"},
                        "spec": {"rules": rules}})
    split = [{"route": [{"destination": {"host": "plan", "subset": plan.stable}, "weight": 100},
                        {"destination": {"host": "plan", "subset": plan.canary}, "weight": 0}],
              **({"name": name} if name else {})} for name in named]
    subsets = list(dict.fromkeys([plan.stable, plan.canary, *([subset] if subset else [])]))
    vs = {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
          "metadata": {"name": "plan", "namespace": "plan"},
          "spec": {"hosts": ["plan"], "http": split}}
    dr = {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
          "metadata": {"name": "plan", "namespace": "plan"},
          "spec": {"host": "plan", "subsets": [{"name": n, "labels": {"version": n}}
                                               for n in subsets]}}
    return Objects(vs, dr)


def _step_settings(path: str, kind: str, raw: Any, plan: Plan) -> dict[str, Any]:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise BadInput(path, raw, "must be a mapping of settings (or {})")
    allowed = STEP_SETTINGS[kind]
    settings = {}
    for key, value in raw.items():
        if key not in allowed:
            known = ", ".join(allowed) or "none"
            raise BadInput(f"{path}.{key}", value, f"is not a {kind} setting (known: {known})")
        want = allowed[key]
        if isinstance(value, bool) and want is not bool or not isinstance(value, want):
            kinds = " or ".join(t.__name__ for t in (want if isinstance(want, tuple) else (want,)))
            raise BadInput(f"{path}.{key}", value, f"must be a {kinds}")
        settings[key] = value
    if kind == "shadow":
        settings.setdefault("percentage", default("shadow", "percentage"))
        _number(f"{path}.percentage", settings["percentage"], 0, 100, open_low=True)
        settings["percentage"] = float(settings["percentage"])
        if "window" in settings and _duration(f"{path}.window", settings["window"]) <= 0:
            raise BadInput(f"{path}.window", settings["window"], "must be above 0")
    if kind == "blue-green":
        settings.setdefault("to_subset", plan.canary)
        names.check_dns_label(f"{path}.to_subset", settings["to_subset"])
        if settings["to_subset"] not in (plan.stable, plan.canary):
            raise BadInput(f"{path}.to_subset", settings["to_subset"],
                           f"must be the stable ({plan.stable}) or canary ({plan.canary}) subset")
    if kind == "approve":
        settings = {**APPROVE_DEFAULTS, **settings}
        for key in ("timeout", "check_every"):
            if _duration(f"{path}.{key}", settings[key]) <= 0:
                raise BadInput(f"{path}.{key}", settings[key], "must be above 0")
        if settings["on_timeout"] not in APPROVAL_TIMEOUT_ACTIONS:
            raise BadInput(f"{path}.on_timeout", settings["on_timeout"],
                           "must be rollback or hold (keep waiting; never promote unapproved)")
    if kind == "internal-canary":
        for key, value in settings.items():
            if not value:
                raise BadInput(f"{path}.{key}", value, "must not be empty")
        for key, needs in (("header_value", "header"), ("cookie_value", "cookie_name"),
                           ("query_value", "query_parameter")):
            if key in settings and needs not in settings and set(INTERNAL_MATCHES) & set(
                    settings):
                raise BadInput(f"{path}.{key}", settings[key], f"needs {needs} beside it: the "
                               f"step adds only the routes it names")
        # The route's match needs what Istio accepts: checked now, not when the step runs.
        if "header" in settings and not CLAIM_HEADER.fullmatch(settings["header"]) and (
                not names.is_header_name(settings["header"])
                or settings["header"] != settings["header"].lower()):
            raise BadInput(f"{path}.header", settings["header"],
                           "must be a lowercase HTTP header name such as x-canary")
        for key in ("header_value", "cookie_value", "query_value"):
            if key in settings and any(ord(c) < 0x20 or ord(c) == 0x7F
                                       for c in settings[key]):
                raise BadInput(f"{path}.{key}", settings[key],
                               "must not hold control characters or line breaks")
        _check_match_routes(path, settings, plan)
        if "cookie_name" in settings and not names.is_cookie_name(settings["cookie_name"]):
            raise BadInput(f"{path}.cookie_name", settings["cookie_name"],
                           "must be a cookie name (letters, digits, - _ . etc.)")
    return settings


def _check_match_routes(path: str, settings: dict[str, Any], plan: Plan) -> None:
    """Each route the step will add, made on stand-in objects by the plan's router."""
    from canarykit.rollout.phases import internal_routes
    from canarykit.routers.gateway_api import GatewayRouter
    from canarykit.routers.istio import IstioRouter

    implementation = GatewayRouter if plan.router == "gateway-api" else IstioRouter
    router = implementation(None, plan.service, plan.stable, plan.canary,  # type: ignore
                            tuple(plan.routes))
    stand_in = _stand_in(plan, None, None)
    given = {name: default("internal-canary", name)
             for name in ("header", "header_value", "header_match", "cookie_name",
                          "cookie_value", "query_parameter", "query_value", "source_labels")}
    given.update(internal_defaults(settings, f"{path}.source_labels"))
    try:
        for operation, renames in internal_routes(router, **given):
            try:
                operation(stand_in.route, extra=stand_in.extra)
            except BadInput as err:
                raise BadInput(f"{path}.{renames.get(err.field, err.field)}", err.value,
                               err.problem) from None
    except BadInput as err:
        if err.field.startswith(path):
            raise
        raise BadInput(f"{path}.{err.field}", err.value, err.problem) from None


def _labels_text(field: str, labels: dict[str, Any]) -> str:
    """A plan's `source_labels` mapping as the runbook's `KEY=VALUE,...` text."""
    for key, value in labels.items():
        if not isinstance(key, str) or not isinstance(value, str) or "," in key + value \
                or "=" in key:
            raise BadInput(field, labels, "must map label keys to label values (strings)")
    return ",".join(f"{key}={value}" for key, value in labels.items())


def internal_defaults(settings: dict[str, Any],
                      field: str = "source_labels") -> dict[str, Any]:
    """An internal-canary step's settings as the runbook's parameters: naming any match adds
    only the routes it names; naming none adds the runbook's default header and cookie;
    `source_labels` as the runbook's text (a refusal names `field`)."""
    found = dict(settings)
    if set(INTERNAL_MATCHES) & set(found):
        found.setdefault("header", "")
        found.setdefault("cookie_name", "")
    if isinstance(found.get("source_labels"), dict):
        found["source_labels"] = _labels_text(field, found["source_labels"])
    return found


# ---------------------------------------------------------------- phases


def _rehearsal_route(plan: Plan, index: int) -> str:
    """Where a fault rehearsal injects its faults: a route that sends only to the canary, the
    first that an earlier internal-canary step adds (checked when the plan loads)."""
    from canarykit.routers.istio import INTERNAL_ROUTES

    for step in plan.steps[:index]:
        if step.kind == "internal-canary":
            settings = internal_defaults(step.settings)
            for key, route in zip(INTERNAL_MATCHES, INTERNAL_ROUTES, strict=True):
                if settings.get(key, default("internal-canary", key)):
                    return route
    return ""


def _slug(number: float) -> str:
    return f"{number:g}".replace(".", "-")


def expand(plan: Plan) -> list[PhaseSpec]:
    """The phases in order: preflight, each step's runbook (and its analysis), promote."""
    preflight = {"min_baseline_success_rate": float(plan.preflight.min_baseline_success_rate),
                 "baseline_window": plan.preflight.baseline_window}
    if plan.analysis.version_label_key:  # else the runbook's default: Istio's precedence
        preflight["version_label_key"] = plan.analysis.version_label_key
    phases = [PhaseSpec("preflight", "preflight", preflight, judged=True,
                        pause=_duration("pause", plan.pause))]
    for index, step in enumerate(plan.steps):
        phases += _step_phases(index, step, plan)
    if plan.steps[-1].kind != "promote":
        phases.append(PhaseSpec("promote", "promote"))
    if plan.hooks("confirm-promotion"):  # held until every confirm-promotion hook says 2xx
        phases.insert(len(phases) - 1, PhaseSpec("confirm-promotion", "", {},
                                                 phases[-1].step, gate="confirm-promotion"))
    return phases


def _step_phases(index: int, step: Step, plan: Plan) -> list[PhaseSpec]:
    found: list[PhaseSpec]
    weight: float = -1  # -1: the analyze runbook reads the configured weight
    if step.kind == "internal-canary":
        settings = internal_defaults(step.settings)
        found = [PhaseSpec("internal-canary", "internal-canary", settings, index)]
        label = "internal"
    elif step.kind == "shadow":
        percentage = step.settings["percentage"]
        parameters = analysis_values("shadow", step.analysis or plan.analysis)
        parameters.update(step.settings)
        found = [PhaseSpec(f"shadow-{_slug(percentage)}", "shadow", parameters, index,
                           judged=True)]
        label = ""
    elif step.kind == "weight":
        weight = step.settings["weight"]
        found = [PhaseSpec(f"shift-{weight}", "shift-traffic", {"canary_weight": weight}, index)]
        label = str(weight)
        weight = weight if weight < 100 else -1  # the analysis wants a share below 100
    elif step.kind == "approve":
        return [PhaseSpec("approve", "", dict(step.settings), index, gate="approve",
                          pause=_duration("pause", step.pause))]
    elif step.kind == "blue-green":
        subset = step.settings["to_subset"]
        found = [PhaseSpec(f"blue-green-{subset}", "blue-green", dict(step.settings), index)]
        label = subset
    elif step.kind == "policy":
        return [PhaseSpec(f"policy-{index + 1}", "traffic-policy", dict(step.settings), index,
                          pause=_duration("pause", step.pause))]
    elif step.kind == "fault-rehearsal":
        settings = dict(step.settings)
        settings.setdefault("route", _rehearsal_route(plan, index))
        found = [PhaseSpec(f"fault-rehearsal-{index + 1}", "traffic-policy", settings, index)]
        if step.analysis is not None:
            parameters = {**analysis_values("analyze", step.analysis), "canary_weight": -1.0}
            found.append(PhaseSpec(f"analyze-fault-rehearsal-{index + 1}", "analyze",
                                   parameters, index, judged=True))
        found.append(PhaseSpec(f"clear-fault-{index + 1}", "traffic-policy",
                               {"route": settings["route"], "clear": "fault"}, index,
                               pause=_duration("pause", step.pause)))
        return found
    else:
        return [PhaseSpec("promote", "promote", dict(step.settings), index,
                          pause=_duration("pause", step.pause))]
    if step.analysis is not None and label:
        parameters = {**analysis_values("analyze", step.analysis),
                      "canary_weight": float(weight)}
        found.append(PhaseSpec(f"analyze-{label}", "analyze", parameters, index, judged=True))
    found[-1].pause = _duration("pause", step.pause)
    return found
