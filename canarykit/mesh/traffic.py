"""Pure operations on Istio objects, each returning a `Change` (before, after, diff).

Every operation validates its parameters first (BadInput naming the parameter and value),
never mutates its input, is idempotent, and writes only canarykit's managed fields
(`spec.http` of a VirtualService; `spec.trafficPolicy` and `spec.subsets` of a DestinationRule).
Applying `Change.after` to a cluster is the job of `cluster.py`.
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass
from typing import Any

import re2

from canarykit.core.durations import parse_duration
from canarykit.core.errors import BadInput
from canarykit.core.names import (
    is_cookie_name,
    is_dns1123_label,
    is_header_name,
    is_label_key,
    is_label_value,
    is_query_parameter_name,
    is_route_name,
    qualified,
)
from canarykit.mesh import istio

HEADER_MATCH_KINDS = istio.STRING_MATCH_KINDS
_MIRROR_KEYS = ("mirror", "mirrorPercentage", "mirrorPercent", "mirror_percent")
_COOKIE_VALUE = re.compile(r"[\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]*")
_COOKIE_PATH = re.compile(r"/[^;\s\x00-\x1f]*")
_INT32_MAX = 2**31 - 1
_UINT32_MAX = 2**32 - 1
# parameter -> (CRD field, largest value; None for a duration)
_OUTLIER_FIELDS = {
    "consecutive_5xx_errors": ("consecutive5xxErrors", _UINT32_MAX),
    "consecutive_gateway_errors": ("consecutiveGatewayErrors", _UINT32_MAX),
    "interval": ("interval", None),
    "base_ejection_time": ("baseEjectionTime", None),
    "consecutive_local_origin_failures": ("consecutiveLocalOriginFailures", _UINT32_MAX),
    "split_external_local_origin_errors": ("splitExternalLocalOriginErrors", bool),
    "max_ejection_percent": ("maxEjectionPercent", 100),
    "min_health_percent": ("minHealthPercent", 100),
}
# parameter -> (connectionPool section, CRD field); limits are counts of at least 1, names
# ending in _timeout/_duration/_time/_interval are durations
_POOL_FIELDS = {
    "max_connections": ("tcp", "maxConnections"),
    "connect_timeout": ("tcp", "connectTimeout"),
    "max_connection_duration": ("tcp", "maxConnectionDuration"),
    "tcp_idle_timeout": ("tcp", "idleTimeout"),
    "tcp_keepalive_probes": ("tcp.tcpKeepalive", "probes"),
    "tcp_keepalive_time": ("tcp.tcpKeepalive", "time"),
    "tcp_keepalive_interval": ("tcp.tcpKeepalive", "interval"),
    "http1_max_pending_requests": ("http", "http1MaxPendingRequests"),
    "http2_max_requests": ("http", "http2MaxRequests"),
    "max_requests_per_connection": ("http", "maxRequestsPerConnection"),
    "max_retries": ("http", "maxRetries"),
    "idle_timeout": ("http", "idleTimeout"),
    "h2_upgrade_policy": ("http", "h2UpgradePolicy"),
    "use_client_protocol": ("http", "useClientProtocol"),
    "max_concurrent_streams": ("http", "maxConcurrentStreams"),
}
H2_UPGRADE_POLICIES = ("DEFAULT", "DO_NOT_UPGRADE", "UPGRADE")
# gRPC status names Istio takes for fault.abort.grpcStatus
GRPC_STATUSES = ("OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED",
                 "NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED",
                 "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL",
                 "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED")


@dataclass
class Change:
    """One operation on one object: what it was asked, the whole object before and after."""

    operation: str
    params: dict
    before: dict
    after: dict

    @property
    def target(self) -> str:
        """The changed object, as `VirtualService default/reviews`."""
        return istio.object_ref(self.after)

    @property
    def changed(self) -> bool:
        """Whether `after` differs from `before` (exactly when `diff()` is not empty)."""
        return istio.dump_object(self.before) != istio.dump_object(self.after)

    def diff(self) -> str:
        """Unified diff of the YAML of before and after, headed with the object ref."""
        before = istio.dump_object(self.before).splitlines(keepends=True)
        after = istio.dump_object(self.after).splitlines(keepends=True)
        ref = self.target
        return "".join(difflib.unified_diff(before, after, f"{ref} (before)", f"{ref} (after)"))

    def to_dict(self) -> dict:
        """For the audit log and reports: `before`/`after` hold only the managed fields."""
        return {
            "operation": self.operation,
            "target": self.target,
            "params": istio.copy_object(self.params),
            "changed": self.changed,
            "before": istio.managed_fields(self.before),
            "after": istio.managed_fields(self.after),
            "diff": self.diff(),
        }


def _change(operation: str, params: dict, before: dict, after: dict) -> Change:
    return Change(operation, params, istio.copy_object(before), after)


# --- parameter checks -------------------------------------------------------------------------

def _number(field: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise BadInput(field, value, "must be a number")
    return value


def _weight(field: str, value: Any) -> int:
    number = _number(field, value)
    if number != int(number) or not 0 <= number <= 100:
        raise BadInput(field, value, "must be a whole percentage from 0 to 100")
    return int(number)


def _percent(field: str, value: Any) -> int | float:
    number = _number(field, value)
    if not 0 <= number <= 100:
        raise BadInput(field, value, "must be a percentage from 0 to 100")
    return int(number) if float(number).is_integer() else float(number)


def _count(field: str, value: Any, minimum: int = 0, maximum: int = _INT32_MAX) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise BadInput(field, value, f"must be a whole number from {minimum} to {maximum}")
    return value


def _duration(field: str, value: Any, minimum: float = 0.001) -> str:
    seconds = parse_duration(value, field)
    if seconds < minimum:
        least = "1ms" if minimum == 0.001 else f"{minimum}s"
        raise BadInput(field, value, f"must be at least {least}")
    return value


def _regex(field: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise BadInput(field, value, "must be a non-empty RE2 regular expression")
    options = re2.Options()
    options.log_errors = False
    try:
        re2.compile(value, options=options)
    except re2.error as err:
        reason = err.args[0].decode() if err.args and isinstance(err.args[0], bytes) else err
        raise BadInput(field, value, f"is not a valid RE2 regular expression: {reason}") from None
    return value


def _http_status(field: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 200 <= value <= 599:
        raise BadInput(field, value, "must be an HTTP status from 200 to 599")
    return value


def _flag(field: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise BadInput(field, value, "must be true or false")
    return value


def _abort_status(field: str, value: Any) -> tuple[str, int | str]:
    """An HTTP status (a number) or a gRPC status (a name such as UNAVAILABLE)."""
    if isinstance(value, str) and value.upper() in GRPC_STATUSES:
        return "grpcStatus", value.upper()
    if isinstance(value, bool) or not isinstance(value, int) or not 200 <= value <= 599:
        raise BadInput(field, value, "must be an HTTP status (a number from 200 to 599) or a gRPC "
                       "status name such as UNAVAILABLE")
    return "httpStatus", value


def _header_name(field: str, value: Any) -> str:
    if not is_header_name(value) or value != value.lower():
        raise BadInput(field, value, "must be a lowercase HTTP header name such as x-canary")
    return value


def _labels(field: str, value: Any) -> dict[str, str]:
    if not isinstance(value, dict) or not value:
        raise BadInput(field, value, "must be labels such as {app: reviews-tester}")
    for key, label in value.items():
        if not is_label_key(key):
            raise BadInput(field, key, "is not a Kubernetes label key")
        if not isinstance(label, str) or not label or not is_label_value(label):
            raise BadInput(field, label, f"is not a Kubernetes label value (label {key})")
    return dict(value)


def _subset_name(field: str, value: Any) -> str:
    if not is_dns1123_label(value):
        raise BadInput(field, value, "must be a subset name (a DNS-1123 label such as v2)")
    return value


def _route_name(field: str, value: Any) -> str:
    if not is_route_name(value):
        raise BadInput(field, value, "must be a route name of letters, digits, '-', '_' or '.'")
    return value


def _text(field: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise BadInput(field, value, "must be a non-empty string")
    return value


def _distinct(stable: str, other_field: str, other: str) -> None:
    if other == stable:
        raise BadInput(other_field, other, f"must differ from the stable subset {stable!r}")


def _at_least_one(names: dict[str, Any], note: str = "") -> None:
    if all(value is None for value in names.values()):
        raise BadInput(next(iter(names)), None,
                       f"give at least one of {', '.join(names)}" + (f" {note}" if note else ""))


# --- object helpers ---------------------------------------------------------------------------

def _known_subsets(vs: dict, dr: dict | None) -> list[str]:
    """Subsets a route may send to: the DestinationRule's when given, else those the
    VirtualService already routes or mirrors to."""
    if dr is not None:
        return istio.destination_rule_subsets(dr)
    known: list[str] = []
    for route in istio.http_routes(vs):
        mirror = route.get("mirror") if isinstance(route.get("mirror"), dict) else {}
        for subset in [*istio.route_subsets(route), mirror.get("subset")]:
            if subset and subset not in known:
                known.append(subset)
    return known


def _require_known(field: str, subset: str, vs: dict, dr: dict | None) -> None:
    known = _known_subsets(vs, dr)
    if subset not in known:
        where = istio.object_ref(dr) if dr is not None else istio.object_ref(vs)
        names = ", ".join(sorted(known)) or "none"
        hint = "" if dr is not None else "; pass the DestinationRule to use a new subset"
        raise BadInput(field, subset, f"is not a subset known to {where} (known: {names}){hint}")


def _check_dr_host(dr: dict | None, vs: dict, host: str, label: str) -> None:
    if dr is None:
        return
    dr_host = (dr.get("spec") or {}).get("host") or ""
    if not istio.same_host(qualified(dr_host, istio.namespace_of(dr)),
                           qualified(host, istio.namespace_of(vs)), istio.namespace_of(vs)):
        raise BadInput("dr", istio.object_ref(dr),
                       f"is for host {dr_host!r} but route {label} sends to {host!r}")


def _locate(vs: dict, stable: str, canary: str, route: str | None) -> tuple[dict, dict, str]:
    """A copy of `vs`, the route to change inside that copy, and the route's label."""
    istio.http_routes(vs)
    after = istio.copy_object(vs)
    index = istio.find_canary_route(after, stable, canary, route)
    return after, after["spec"]["http"][index], istio.route_label(after, index)


def _template(route: dict, label: str, prefer: str) -> dict:
    """The destination to copy host and port from: the one with subset `prefer`, else the first."""
    entries = [e for e in istio.route_destinations(route) if isinstance(e.get("destination"), dict)]
    if not entries:
        raise BadInput("route", label, "has no destinations to take the host from")
    chosen = next((e for e in entries if e["destination"].get("subset") == prefer), entries[0])
    return chosen["destination"]


def _destination(template: dict, subset: str) -> dict:
    destination = {"host": template.get("host"), "subset": subset}
    if "port" in template:
        destination["port"] = istio.copy_object(template["port"])
    return destination


def _policy_holder(dr: dict, subset: str | None) -> dict:
    """Where the trafficPolicy lives: the spec, or the named subset (refused when unknown)."""
    spec = dr.setdefault("spec", {})
    if subset is None:
        return spec
    subsets = [s for s in spec.get("subsets") or [] if isinstance(s, dict)]
    holder = next((s for s in subsets if s.get("name") == subset), None)
    if holder is None:
        names = ", ".join(str(s.get("name")) for s in subsets) or "none"
        raise BadInput("subset", subset,
                       f"{istio.object_ref(dr)} has no subset of that name (subsets: {names})")
    return holder


def _policy(holder: dict) -> dict:
    """The holder's trafficPolicy, created empty when missing."""
    if not isinstance(holder.get("trafficPolicy"), dict):
        holder["trafficPolicy"] = {}
    return holder["trafficPolicy"]


def _prune(holder: dict, key: str) -> None:
    if holder.get(key) == {}:
        del holder[key]


def _dr_copy(dr: dict, subset: str | None) -> dict:
    istio.destination_rule_subsets(dr)
    if subset is not None:
        _subset_name("subset", subset)
    return istio.copy_object(dr)


# --- VirtualService operations ----------------------------------------------------------------

def set_canary_weight(vs: dict, canary_weight: int, *, stable: str = "v1", canary: str = "v2",
                      route: str | None = None, dr: dict | None = None) -> Change:
    """Split the canary route `100-N` to stable and `N` to canary.

    Both destinations stay even at 0/100 so every step has the same shape; a missing one is
    added with the other's host and port. Without `dr` the canary subset may be new to the
    VirtualService; with `dr` both subsets must be among its subsets.
    """
    weight = _weight("canary_weight", canary_weight)
    _subset_name("stable", stable)
    _subset_name("canary", canary)
    _distinct(stable, "canary", canary)
    _require_known("stable", stable, vs, dr)
    if dr is not None:
        _require_known("canary", canary, vs, dr)
    after, target, label = _locate(vs, stable, canary, route)
    subsets = istio.route_subsets(target)
    others = sorted({str(s) for s in subsets if s not in (stable, canary)})
    if others:
        raise BadInput("route", label, f"also sends traffic to subsets {', '.join(others)}; "
                       f"canarykit splits only between {stable} and {canary}")
    for field, subset in (("stable", stable), ("canary", canary)):
        if subsets.count(subset) > 1:
            raise BadInput(field, subset, f"route {label} has several destinations of this subset")
    template = _template(target, label, stable)
    _check_dr_host(dr, vs, template.get("host") or "", label)
    entries = target["route"]
    for subset in (stable, canary):
        if subset not in subsets:
            entry = {"destination": _destination(template, subset)}
            entries.insert(len(entries) if subset == canary else 0, entry)
    for entry in entries:
        subset = (entry.get("destination") or {}).get("subset")
        entry["weight"] = weight if subset == canary else 100 - weight
    params = {"canary_weight": weight, "stable": stable, "canary": canary, "route": route}
    return _change("set_canary_weight", _with_dr(params, dr), vs, after)


def _with_dr(params: dict, dr: dict | None) -> dict:
    if dr is not None:
        params["dr"] = istio.object_ref(dr)
    return params


def prefix_regex(prefix: str) -> str:
    """A prefix as an RE2 pattern, for matches that take no prefix (query parameters, Gateway
    API headers)."""
    return re.escape(prefix) + ".*"


def cookie_regex(name: str, value: str | None = None) -> str:
    """An RE2 pattern for the whole `cookie` header that holds cookie `name` (with `value`)."""
    if not is_cookie_name(name):
        raise BadInput("cookie", name, "must be a cookie name (letters, digits, - _ . etc.)")
    if value is not None and (not isinstance(value, str) or not _COOKIE_VALUE.fullmatch(value)):
        raise BadInput("value", value, "must be a cookie value without spaces, quotes, ; or ,")
    wanted = "[^;]*" if value is None else re2.escape(value)
    return rf"^(.*;\s*)?{re2.escape(name)}={wanted}(;.*)?$"


def add_match_route(vs: dict, *, name: str, canary: str = "v2", header: str | None = None,
                    match: str = "exact", value: str | None = None,
                    cookie_regex: str | None = None, query_parameter: str | None = None,
                    source_labels: dict[str, str] | None = None, stable: str = "v1",
                    route: str | None = None, dr: dict | None = None) -> Change:
    """Send matching requests to the canary, ahead of the percentage split.

    Composite routing: internal users first, then a share of everyone. Exactly one condition:
    a header (`match` exact, prefix or regex against `value`; a JWT claim
    `@request.auth.claims.NAME` works only on a gateway-bound VirtualService), a cookie
    (`cookie_regex`, the pattern for the whole `cookie` header, see `cookie_regex()`), a query
    parameter (`match` exact or regex) or the calling workload's `source_labels`. The route is
    placed just in front of the canary split route; re-adding the same `name` replaces it.
    """
    _route_name("name", name)
    _subset_name("canary", canary)
    _subset_name("stable", stable)
    given = {"header": header, "cookie_regex": cookie_regex,
             "query_parameter": query_parameter, "source_labels": source_labels}
    if sum(v is not None for v in given.values()) != 1:
        raise BadInput("header", header, "give exactly one of header (with value), "
                       "cookie_regex, query_parameter (with value) or source_labels")
    if header is not None or query_parameter is not None:
        kinds = HEADER_MATCH_KINDS if header is not None else ("exact", "regex")
        if match not in kinds:
            raise BadInput("match", match, f"must be one of {', '.join(kinds)}")
        if match == "regex":
            _regex("value", value)
        else:
            _text("value", value)
    elif value is not None:
        raise BadInput("value", value, "goes with a header or a query parameter")
    if header is not None:
        if not istio.CLAIM_HEADER.fullmatch(header):
            _header_name("header", header)
        condition: dict = {"headers": {header: {match: value}}}
    elif query_parameter is not None:
        if not is_query_parameter_name(query_parameter):
            raise BadInput("query_parameter", query_parameter, "must be a query parameter name")
        condition = {"queryParams": {query_parameter: {match: value}}}
    elif source_labels is not None:
        condition = {"sourceLabels": _labels("source_labels", source_labels)}
    else:
        condition = {"headers": {"cookie": {"regex": _regex("cookie_regex", cookie_regex)}}}
    _require_known("canary", canary, vs, dr)
    after, split, label = _locate(vs, stable, canary, route)
    template = _template(split, label, stable)
    _check_dr_host(dr, vs, template.get("host") or "", label)
    new_route = {"name": name, "match": [condition],
                 "route": [{"destination": _destination(template, canary)}]}
    http = after["spec"]["http"]
    split_index = next(i for i, r in enumerate(http) if r is split)
    existing = next((i for i, r in enumerate(http) if r.get("name") == name), None)
    if existing == split_index:
        raise BadInput("name", name, "is the name of the canary split route itself")
    if existing is None:
        http.insert(split_index, new_route)
    else:
        http[existing] = new_route
    params = {"name": name, "canary": canary, "header": header,
              "match": match if value is not None else None, "value": value,
              "cookie_regex": cookie_regex, "query_parameter": query_parameter,
              "source_labels": source_labels, "stable": stable, "route": route}
    return _change("add_match_route", _with_dr(params, dr), vs, after)


def sends_to(entry: dict, subset: str, host: str, namespace: str) -> bool:
    """Whether a route destination sends traffic (weight unset or above 0) to `subset` of
    `host`: another service's subset of the same name is not this version."""
    destination = entry.get("destination") or {}
    return (destination.get("subset") == subset
            and istio.same_host(destination.get("host") or "", host, namespace)
            and (entry.get("weight") is None or entry.get("weight", 0) > 0))


def move_routes(vs: dict, *, stable: str, canary: str, host: str) -> Change:
    """Every route still sending to `stable` of `host` sends that share to `canary` instead
    (a destination of both becomes one, weights added), so no route is left on the old
    version; other services' subsets are left alone."""
    after = istio.copy_object(vs)
    namespace = istio.namespace_of(vs)
    moved = []
    for index, rule in enumerate(istio.http_routes(after)):
        entries = istio.route_destinations(rule)
        if not any(sends_to(e, stable, host, namespace) for e in entries):
            continue
        merged: list[dict] = []
        for entry in entries:
            destination = entry.get("destination") or {}
            if sends_to(entry, stable, host, namespace):
                entry = {**entry, "destination": {**destination, "subset": canary}}
            same = next((m for m in merged if m.get("destination") == entry.get("destination")),
                        None)
            if same is None:
                merged.append(entry)
            elif "weight" in same or "weight" in entry:
                same["weight"] = same.get("weight", 0) + entry.get("weight", 0)
        if len(merged) == 1:
            merged[0].pop("weight", None)
        rule["route"] = merged
        moved.append(istio.route_label(after, index))
    return _change("move_routes", {"stable": stable, "canary": canary, "moved": moved}, vs,
                   after)


def remove_match_route(vs: dict, name: str) -> Change:
    """Remove the match route `name` (no change when there is none).

    A route without `match` is a catch-all that carries everyone's traffic: it is refused.
    """
    _route_name("name", name)
    after = istio.copy_object(vs)
    http = istio.http_routes(after)
    index = next((i for i, r in enumerate(http) if r.get("name") == name), None)
    if index is not None:
        if not http[index].get("match"):
            raise BadInput("name", name, "is a catch-all route (no match), not a match route")
        del http[index]
    return _change("remove_match_route", {"name": name}, vs, after)


def set_mirror(vs: dict, *, subset: str = "v2", percentage: float, route: str | None = None,
               stable: str = "v1", dr: dict | None = None) -> Change:
    """Mirror (shadow) `percentage` of the canary route's requests to `subset`.

    Refused when the route uses `mirrors`: Istio rejects `mirror` and `mirrors` together.
    """
    pct = _percent("percentage", percentage)
    _subset_name("subset", subset)
    _subset_name("stable", stable)
    _distinct(stable, "subset", subset)
    _require_known("subset", subset, vs, dr)
    after, target, label = _locate(vs, stable, subset, route)
    if "mirrors" in target:
        raise BadInput("route", label,
                       "already has `mirrors`, and Istio refuses `mirror` together with it")
    template = _template(target, label, stable)
    _check_dr_host(dr, vs, template.get("host") or "", label)
    target["mirror"] = _destination(template, subset)
    target["mirrorPercentage"] = {"value": pct}
    target.pop("mirrorPercent", None)
    target.pop("mirror_percent", None)
    params = {"subset": subset, "percentage": pct, "route": route, "stable": stable}
    return _change("set_mirror", _with_dr(params, dr), vs, after)


def clear_mirror(vs: dict, *, route: str | None = None, stable: str = "v1",
                 canary: str = "v2") -> Change:
    """Stop mirroring on the canary route (`mirrors`, which canarykit never sets, stays)."""
    after, target, _ = _locate(vs, stable, canary, route)
    for key in _MIRROR_KEYS:
        target.pop(key, None)
    params = {"route": route, "stable": stable, "canary": canary}
    return _change("clear_mirror", params, vs, after)


def switch_all_traffic(vs: dict, subset: str, *, route: str | None = None, stable: str = "v1",
                       canary: str = "v2", dr: dict | None = None) -> Change:
    """Blue-green switch: the canary route sends everything to `subset`.

    The route is left with that single destination and no `weight` (a lone destination takes
    all traffic). An existing destination of `subset` is kept with its port and headers;
    otherwise one is made with the host and port of the stable destination.
    """
    _subset_name("subset", subset)
    _subset_name("stable", stable)
    _subset_name("canary", canary)
    _require_known("subset", subset, vs, dr)
    after, target, label = _locate(vs, stable, canary, route)
    template = _template(target, label, stable)
    _check_dr_host(dr, vs, template.get("host") or "", label)
    entries = istio.route_destinations(target)
    keep = next((e for e in entries if (e.get("destination") or {}).get("subset") == subset),
                None)
    if keep is None:
        keep = {"destination": _destination(template, subset)}
    keep.pop("weight", None)
    target["route"] = [keep]
    params = {"subset": subset, "route": route, "stable": stable, "canary": canary}
    return _change("switch_all_traffic", _with_dr(params, dr), vs, after)


def set_fault(vs: dict, *, route: str | None = None, delay: str | None = None,
              delay_percent: float | None = None, abort_status: int | str | None = None,
              abort_percent: float | None = None, stable: str = "v1",
              canary: str = "v2") -> Change:
    """Inject a fixed delay and/or an HTTP abort on a route (the canary route by default).

    The route's `fault` becomes exactly what is given; a percent left out means 100. The
    abort is an HTTP status (a number) or a gRPC status (a name such as UNAVAILABLE).
    """
    _at_least_one({"delay": delay, "abort_status": abort_status}, "(clear_fault removes faults)")
    fault: dict = {}
    if delay is not None:
        fault["delay"] = {"fixedDelay": _duration("delay", delay), "percentage": {
            "value": _percent("delay_percent", 100 if delay_percent is None else delay_percent)}}
    elif delay_percent is not None:
        raise BadInput("delay_percent", delay_percent, "needs delay")
    if abort_status is not None:
        key, status = _abort_status("abort_status", abort_status)
        fault["abort"] = {key: status, "percentage": {
            "value": _percent("abort_percent", 100 if abort_percent is None else abort_percent)}}
    elif abort_percent is not None:
        raise BadInput("abort_percent", abort_percent, "needs abort_status")
    after, target, _ = _locate(vs, stable, canary, route)
    target["fault"] = fault
    params = {"route": route, "delay": delay, "delay_percent": delay_percent,
              "abort_status": abort_status, "abort_percent": abort_percent,
              "stable": stable, "canary": canary}
    return _change("set_fault", params, vs, after)


def clear_fault(vs: dict, *, route: str | None = None, stable: str = "v1",
                canary: str = "v2") -> Change:
    """Remove fault injection from a route (the canary route by default)."""
    after, target, _ = _locate(vs, stable, canary, route)
    target.pop("fault", None)
    return _change("clear_fault", {"route": route, "stable": stable, "canary": canary}, vs, after)


def retry_conditions(value: str | list[str] | tuple[str, ...]) -> str:
    """Validate Envoy/Istio retry conditions and return them as Istio's comma-separated string."""
    tokens = value.split(",") if isinstance(value, str) else value
    if not isinstance(tokens, list | tuple) or not tokens:
        raise BadInput("retry_on", value, "must be retry conditions such as 5xx,reset")
    cleaned = []
    for token in tokens:
        token = token.strip() if isinstance(token, str) else token
        if isinstance(token, str) and token.isdigit() and 100 <= int(token) <= 599:
            cleaned.append(token)
        elif token in istio.RETRY_ON_POLICIES:
            cleaned.append(token)
        else:
            raise BadInput("retry_on", token, "is not an Envoy retry condition "
                           f"({', '.join(sorted(istio.RETRY_ON_POLICIES))}, or an HTTP status)")
    return ",".join(cleaned)


def set_timeout_and_retries(vs: dict, *, route: str | None = None, timeout: str | None = None,
                            attempts: int | None = None, per_try_timeout: str | None = None,
                            retry_on: str | list[str] | None = None,
                            retry_remote_localities: bool | None = None, stable: str = "v1",
                            canary: str = "v2") -> Change:
    """Set a route's `timeout` and `retries`; fields not given keep their current values."""
    _at_least_one({"timeout": timeout, "attempts": attempts, "per_try_timeout": per_try_timeout,
                   "retry_on": retry_on, "retry_remote_localities": retry_remote_localities})
    retries: dict = {}
    if timeout is not None:
        _duration("timeout", timeout)
    if attempts is not None:
        retries["attempts"] = _count("attempts", attempts)
    if per_try_timeout is not None:
        retries["perTryTimeout"] = _duration("per_try_timeout", per_try_timeout)
    if retry_on is not None:
        retries["retryOn"] = retry_conditions(retry_on)
    if retry_remote_localities is not None:
        retries["retryRemoteLocalities"] = _flag("retry_remote_localities",
                                                 retry_remote_localities)
    after, target, _ = _locate(vs, stable, canary, route)
    if timeout is not None:
        target["timeout"] = timeout
    if retries:
        current = target.get("retries") if isinstance(target.get("retries"), dict) else {}
        current.update(retries)
        target["retries"] = current
    params = {"route": route, "timeout": timeout, "attempts": attempts,
              "per_try_timeout": per_try_timeout,
              "retry_on": retries.get("retryOn"),
              "retry_remote_localities": retry_remote_localities, "stable": stable,
              "canary": canary}
    return _change("set_timeout_and_retries", params, vs, after)


def clear_timeout_and_retries(vs: dict, *, route: str | None = None, timeout: bool = True,
                              retries: bool = True, stable: str = "v1",
                              canary: str = "v2") -> Change:
    """Remove a route's `timeout` and/or `retries` (back to Istio's defaults: no timeout, two
    retries on connection failures)."""
    after, target, _ = _locate(vs, stable, canary, route)
    for key, wanted in (("timeout", timeout), ("retries", retries)):
        if wanted:
            target.pop(key, None)
    params = {"route": route, "timeout": timeout, "retries": retries, "stable": stable,
              "canary": canary}
    return _change("clear_timeout_and_retries", params, vs, after)


# --- DestinationRule operations ---------------------------------------------------------------

def set_session_affinity(dr: dict, *, header: str | None = None, cookie: str | None = None,
                         cookie_ttl: str | None = None, cookie_path: str | None = None,
                         source_ip: bool = False, query_parameter: str | None = None,
                         subset: str | None = None) -> Change:
    """Sticky sessions by consistent hashing on exactly one key (header, cookie, source IP or
    query parameter), at top level or for one subset.

    `loadBalancer.simple` is removed (Istio allows `simple` or `consistentHash`, not both);
    hash tuning (ringHash, maglev, minimumRingSize) and other loadBalancer fields stay.
    """
    if not isinstance(source_ip, bool):
        raise BadInput("source_ip", source_ip, "must be true or false")
    given = {"header": header, "cookie": cookie, "source_ip": source_ip or None,
             "query_parameter": query_parameter}
    chosen = [name for name, value in given.items() if value is not None]
    if len(chosen) != 1:
        raise BadInput("session_affinity", chosen,
                       "give exactly one of header, cookie, source_ip, query_parameter")
    if cookie is None:
        for field, value in (("cookie_ttl", cookie_ttl), ("cookie_path", cookie_path)):
            if value is not None:
                raise BadInput(field, value, "needs cookie")
    if header is not None:
        key, setting = "httpHeaderName", _header_name("header", header)
    elif cookie is not None:
        if not is_cookie_name(cookie):
            raise BadInput("cookie", cookie, "must be a cookie name (letters, digits, - _ . etc.)")
        setting = {"name": cookie}
        if cookie_ttl is not None:
            setting["ttl"] = _duration("cookie_ttl", cookie_ttl, minimum=0)
        if cookie_path is not None:
            if not isinstance(cookie_path, str) or not _COOKIE_PATH.fullmatch(cookie_path):
                raise BadInput("cookie_path", cookie_path, "must be a URL path starting with /")
            setting["path"] = cookie_path
        key = "httpCookie"
    elif query_parameter is not None:
        if not is_query_parameter_name(query_parameter):
            raise BadInput("query_parameter", query_parameter, "must be a query parameter name")
        key, setting = "httpQueryParameterName", query_parameter
    else:
        key, setting = "useSourceIp", True
    after = _dr_copy(dr, subset)
    policy = _policy(_policy_holder(after, subset))
    balancer = policy.get("loadBalancer") if isinstance(policy.get("loadBalancer"), dict) else {}
    balancer.pop("simple", None)
    hashing = balancer.get("consistentHash")
    hashing = hashing if isinstance(hashing, dict) else {}
    for other in istio.HASH_KEYS:
        if other != key:
            hashing.pop(other, None)
    hashing[key] = setting
    balancer["consistentHash"] = hashing
    policy["loadBalancer"] = balancer
    params = {"header": header, "cookie": cookie, "cookie_ttl": cookie_ttl,
              "cookie_path": cookie_path, "source_ip": source_ip,
              "query_parameter": query_parameter, "subset": subset}
    return _change("set_session_affinity", params, dr, after)


def clear_session_affinity(dr: dict, *, subset: str | None = None) -> Change:
    """Remove consistent hashing (back to Istio's default balancing); empty parents go too."""
    after = _dr_copy(dr, subset)
    holder = _policy_holder(after, subset)
    policy = holder.get("trafficPolicy")
    balancer = policy.get("loadBalancer") if isinstance(policy, dict) else None
    if isinstance(balancer, dict) and "consistentHash" in balancer:
        del balancer["consistentHash"]
        _prune(policy, "loadBalancer")
        _prune(holder, "trafficPolicy")
    return _change("clear_session_affinity", {"subset": subset}, dr, after)


def set_outlier_detection(dr: dict, *, consecutive_5xx_errors: int | None = None,
                          consecutive_gateway_errors: int | None = None,
                          interval: str | None = None, base_ejection_time: str | None = None,
                          max_ejection_percent: int | None = None,
                          min_health_percent: int | None = None,
                          consecutive_local_origin_failures: int | None = None,
                          split_external_local_origin_errors: bool | None = None,
                          subset: str | None = None) -> Change:
    """Eject failing endpoints (`outlierDetection`); fields not given keep their values."""
    given = {"consecutive_5xx_errors": consecutive_5xx_errors,
             "consecutive_gateway_errors": consecutive_gateway_errors,
             "consecutive_local_origin_failures": consecutive_local_origin_failures,
             "split_external_local_origin_errors": split_external_local_origin_errors,
             "interval": interval,
             "base_ejection_time": base_ejection_time,
             "max_ejection_percent": max_ejection_percent,
             "min_health_percent": min_health_percent}
    _at_least_one(given)
    settings = {}
    for name, value in given.items():
        if value is not None:
            field, maximum = _OUTLIER_FIELDS[name]
            if maximum is None:
                settings[field] = _duration(name, value)
            elif maximum is bool:
                settings[field] = _flag(name, value)
            else:
                settings[field] = _count(name, value, 0, maximum)
    after = _dr_copy(dr, subset)
    policy = _policy(_policy_holder(after, subset))
    _merge(policy, "outlierDetection", settings)
    merged = policy["outlierDetection"]
    if "consecutiveLocalOriginFailures" in merged \
            and merged.get("splitExternalLocalOriginErrors") is not True:
        raise BadInput("consecutive_local_origin_failures",
                       merged["consecutiveLocalOriginFailures"], "counts only with "
                       "split_external_local_origin_errors true (Envoy ignores it otherwise)")
    return _change("set_outlier_detection", {**given, "subset": subset}, dr, after)


def set_connection_pool(dr: dict, *, max_connections: int | None = None,
                        connect_timeout: str | None = None,
                        http1_max_pending_requests: int | None = None,
                        http2_max_requests: int | None = None,
                        max_requests_per_connection: int | None = None,
                        max_retries: int | None = None, idle_timeout: str | None = None,
                        max_connection_duration: str | None = None,
                        tcp_idle_timeout: str | None = None,
                        tcp_keepalive_probes: int | None = None,
                        tcp_keepalive_time: str | None = None,
                        tcp_keepalive_interval: str | None = None,
                        h2_upgrade_policy: str | None = None,
                        use_client_protocol: bool | None = None,
                        max_concurrent_streams: int | None = None,
                        subset: str | None = None) -> Change:
    """Circuit-breaker limits (`connectionPool.tcp` / `.http`); fields not given keep their values.

    Limits must be at least 1: Istio reads 0 as "use the default", not "allow none".
    `idle_timeout` is the HTTP one; `tcp_idle_timeout` the TCP one.
    """
    given = {"max_connections": max_connections, "connect_timeout": connect_timeout,
             "max_connection_duration": max_connection_duration,
             "tcp_idle_timeout": tcp_idle_timeout, "tcp_keepalive_probes": tcp_keepalive_probes,
             "tcp_keepalive_time": tcp_keepalive_time,
             "tcp_keepalive_interval": tcp_keepalive_interval,
             "http1_max_pending_requests": http1_max_pending_requests,
             "http2_max_requests": http2_max_requests,
             "max_requests_per_connection": max_requests_per_connection,
             "max_retries": max_retries, "idle_timeout": idle_timeout,
             "h2_upgrade_policy": h2_upgrade_policy, "use_client_protocol": use_client_protocol,
             "max_concurrent_streams": max_concurrent_streams}
    _at_least_one(given)
    settings: dict[str, dict] = {}
    for name, value in given.items():
        if value is not None:
            section, field = _POOL_FIELDS[name]
            settings.setdefault(section, {})[field] = _pool_value(name, value)
    after = _dr_copy(dr, subset)
    policy = _policy(_policy_holder(after, subset))
    pool = policy.get("connectionPool") if isinstance(policy.get("connectionPool"), dict) else {}
    for section, values in settings.items():
        *parents, key = section.split(".")  # tcp.tcpKeepalive: inside tcp
        holder = pool
        for part in parents:
            if not isinstance(holder.get(part), dict):
                holder[part] = {}
            holder = holder[part]
        _merge(holder, key, values)
    policy["connectionPool"] = pool
    return _change("set_connection_pool", {**given, "subset": subset}, dr, after)


def _pool_value(name: str, value: Any) -> Any:
    if name == "h2_upgrade_policy":
        if value not in H2_UPGRADE_POLICIES:
            raise BadInput(name, value, f"must be one of {', '.join(H2_UPGRADE_POLICIES)}")
        return value
    if name == "use_client_protocol":
        return _flag(name, value)
    if name.endswith(("_timeout", "_duration", "_time", "_interval")):
        return _duration(name, value)
    if name == "tcp_keepalive_probes":
        return _count(name, value, 1, _UINT32_MAX)
    return _count(name, value, minimum=1)


def clear_traffic_policy(dr: dict, key: str, *, subset: str | None = None) -> Change:
    """Remove one trafficPolicy setting (`outlierDetection`, `connectionPool`) at top level or
    of one subset; a trafficPolicy left empty goes too."""
    if key not in ("outlierDetection", "connectionPool"):
        raise BadInput("key", key, "must be outlierDetection or connectionPool")
    after = _dr_copy(dr, subset)
    holder = _policy_holder(after, subset)
    policy = holder.get("trafficPolicy")
    if isinstance(policy, dict) and key in policy:
        del policy[key]
        _prune(holder, "trafficPolicy")
    return _change(f"clear_{key}", {"subset": subset}, dr, after)


def _merge(holder: dict, key: str, settings: dict) -> None:
    current = holder.get(key) if isinstance(holder.get(key), dict) else {}
    current.update(settings)
    holder[key] = current


def ensure_subset(dr: dict, name: str, version_label: str | None = None) -> Change:
    """Make sure subset `name` selects pods labelled `version: <version_label or name>`.

    An existing subset of that name with other labels is refused, never rewritten: it may
    already carry traffic for some other meaning of the name.
    """
    _subset_name("name", name)
    label = name if version_label is None else version_label
    if not is_label_value(label):
        raise BadInput("version_label", version_label, "must be a Kubernetes label value")
    istio.destination_rule_subsets(dr)
    after = istio.copy_object(dr)
    spec = after.setdefault("spec", {})
    subsets = spec.get("subsets") if isinstance(spec.get("subsets"), list) else []
    wanted = {"version": label}
    existing = next((s for s in subsets if isinstance(s, dict) and s.get("name") == name), None)
    if existing is None:
        subsets.append({"name": name, "labels": wanted})
        spec["subsets"] = subsets
    elif existing.get("labels") != wanted:
        raise BadInput("name", name, f"{istio.object_ref(dr)} already has this subset with "
                       f"labels {existing.get('labels')}, not {wanted}")
    return _change("ensure_subset", {"name": name, "version_label": label}, dr, after)


# --- rollback ---------------------------------------------------------------------------------

def restore_managed_fields(obj: dict, snapshot: dict) -> Change:
    """Put the managed fields back as in `snapshot` (from `istio.managed_fields` before the
    rollout began); everything else stays as it is now. The one-call rollback."""
    if not isinstance(snapshot, dict):
        raise BadInput("snapshot", snapshot, "must be a mapping of managed spec fields")
    try:
        after = istio.with_managed_fields(obj, snapshot)
    except BadInput as err:
        if err.field == "fields":
            raise BadInput("snapshot", err.value, err.problem) from None
        raise
    return _change("restore_managed_fields", {"fields": list(snapshot)}, obj, after)
