"""Traffic policy settings, declared once: what `canarykit policy`, the traffic-policy runbook
and a plan's `policy` step may set, and the one change per object they make.

Six groups: `timeout`, `retries` and `fault` live on a VirtualService http route (the canary
route unless one is named); `affinity`, `outlier` and `pool` in a DestinationRule's
trafficPolicy (top level unless a subset is named). Each setting's name is the plan key and
the runbook parameter; the flag is the name with dashes. Values are checked by the
`mesh.traffic` operations, and a refusal names the setting (or its flag), never the
operation's own parameter name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from canarykit.core.errors import BadInput
from canarykit.mesh import istio, traffic

GROUPS = ("timeout", "retries", "fault", "affinity", "outlier", "pool")
ROUTE_GROUPS = ("timeout", "retries", "fault")  # on the VirtualService route
AFFINITY_FORMS = "header:NAME, cookie:NAME[:TTL[:PATH]], source-ip or query:NAME"


@dataclass(frozen=True)
class Setting:
    name: str  # plan key and runbook parameter; the flag is --name-with-dashes
    group: str
    type: str  # duration, count, percent, flag, status, affinity, conditions, choice
    param: str  # the mesh.traffic operation's parameter
    help: str

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


SETTINGS: tuple[Setting, ...] = (
    Setting("timeout", "timeout", "duration", "timeout", "route timeout, e.g. 3s"),
    Setting("retries", "retries", "count", "attempts", "retry attempts (0: no retries)"),
    Setting("per_try_timeout", "retries", "duration", "per_try_timeout",
            "timeout of each try, e.g. 1s"),
    Setting("retry_on", "retries", "conditions", "retry_on",
            "retry conditions, e.g. 5xx,reset,connect-failure,retriable-4xx"),
    Setting("retry_remote_localities", "retries", "flag", "retry_remote_localities",
            "retry in other localities (true/false)"),
    Setting("fault_delay", "fault", "duration", "delay", "fixed delay injected, e.g. 500ms"),
    Setting("fault_delay_percent", "fault", "percent", "delay_percent",
            "percent of requests delayed (default 100)"),
    Setting("fault_abort", "fault", "status", "abort_status",
            "abort with this HTTP status (e.g. 500) or gRPC status (e.g. UNAVAILABLE)"),
    Setting("fault_abort_percent", "fault", "percent", "abort_percent",
            "percent of requests aborted (default 100)"),
    Setting("affinity", "affinity", "affinity", "affinity",
            "sticky sessions: header:N, cookie:N[:TTL[:PATH]], source-ip or query:N"),
    Setting("outlier_consecutive_5xx", "outlier", "count", "consecutive_5xx_errors",
            "5xx answers in a row that eject a host"),
    Setting("outlier_consecutive_gateway_errors", "outlier", "count",
            "consecutive_gateway_errors", "502/503/504 answers in a row that eject a host"),
    Setting("outlier_consecutive_local_origin_failures", "outlier", "count",
            "consecutive_local_origin_failures", "local-origin failures in a row that eject"),
    Setting("outlier_split_local_origin_errors", "outlier", "flag",
            "split_external_local_origin_errors",
            "count local-origin errors apart (true/false)"),
    Setting("outlier_interval", "outlier", "duration", "interval",
            "time between ejection sweeps, e.g. 10s"),
    Setting("outlier_base_ejection", "outlier", "duration", "base_ejection_time",
            "minimum ejection time, e.g. 30s"),
    Setting("outlier_max_ejection_percent", "outlier", "count", "max_ejection_percent",
            "most hosts ejected at once, percent"),
    Setting("outlier_min_health_percent", "outlier", "count", "min_health_percent",
            "ejection stops below this percent of healthy hosts"),
    Setting("max_connections", "pool", "count", "max_connections",
            "TCP connections to a host at most"),
    Setting("connect_timeout", "pool", "duration", "connect_timeout", "TCP connect timeout"),
    Setting("max_connection_duration", "pool", "duration", "max_connection_duration",
            "longest life of a connection"),
    Setting("tcp_idle_timeout", "pool", "duration", "tcp_idle_timeout", "TCP idle timeout"),
    Setting("tcp_keepalive_probes", "pool", "count", "tcp_keepalive_probes",
            "keepalive probes before a connection is dead"),
    Setting("tcp_keepalive_time", "pool", "duration", "tcp_keepalive_time",
            "idle time before keepalive probes"),
    Setting("tcp_keepalive_interval", "pool", "duration", "tcp_keepalive_interval",
            "time between keepalive probes"),
    Setting("http1_max_pending", "pool", "count", "http1_max_pending_requests",
            "requests queued for a connection at most"),
    Setting("http2_max_requests", "pool", "count", "http2_max_requests",
            "active requests to a host at most"),
    Setting("max_requests_per_connection", "pool", "count", "max_requests_per_connection",
            "requests per connection (1: no keep-alive)"),
    Setting("max_retries", "pool", "count", "max_retries",
            "retries outstanding to the whole service at most"),
    Setting("http_idle_timeout", "pool", "duration", "idle_timeout", "HTTP idle timeout"),
    Setting("h2_upgrade_policy", "pool", "choice", "h2_upgrade_policy",
            "DEFAULT, DO_NOT_UPGRADE or UPGRADE"),
    Setting("use_client_protocol", "pool", "flag", "use_client_protocol",
            "keep the client's HTTP version (true/false)"),
    Setting("max_concurrent_streams", "pool", "count", "max_concurrent_streams",
            "HTTP/2 streams per connection at most"),
)
BY_NAME = {s.name: s for s in SETTINGS}


PLACES = ("route", "subset", "clear")  # where a policy goes, and what it removes


def label(name: str, naming: str) -> str:
    """How a refusal names setting `name`: as a flag (`cli`) or as itself (plan, runbook)."""
    if naming == "cli" and name in PLACES:
        return "--" + name
    return BY_NAME[name].flag if naming == "cli" and name in BY_NAME else name


def parse_text(name: str, text: str, naming: str = "cli") -> Any:
    """A setting given as text (a flag, a plan's quoted value) as its typed value."""
    setting = BY_NAME[name]
    if setting.type in ("count", "percent"):
        try:
            return int(text) if setting.type == "count" else float(text)
        except ValueError:
            kind = "whole number" if setting.type == "count" else "number"
            raise BadInput(label(name, naming), text, f"must be a {kind}") from None
    if setting.type == "flag":
        if text.lower() not in ("true", "false"):
            raise BadInput(label(name, naming), text, "must be true or false")
        return text.lower() == "true"
    if setting.type == "status":
        return int(text) if text.isdigit() else text
    return text


def check_clear(value: Any, field: str = "clear") -> list[str]:
    """The groups to clear, from a list or a comma-separated string."""
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple):
        raise BadInput(field, value, f"must be a list of {', '.join(GROUPS)}")
    groups = [item.strip() if isinstance(item, str) else item for item in items]
    groups = [g for g in groups if g != ""]
    for group in groups:
        if group not in GROUPS:
            raise BadInput(field, group, f"is not a policy group (groups: {', '.join(GROUPS)})")
    return list(dict.fromkeys(groups))


def check_settings(values: dict[str, Any], clear: list[str], naming: str = "plan",
                   prefix: str = "") -> dict[str, Any]:
    """`values` with unknown names refused, and none set in a group also cleared."""
    for name, value in values.items():
        if name not in BY_NAME:
            raise BadInput(prefix + label(name, naming), value,
                           "is not a traffic policy setting (settings: "
                           + ", ".join(BY_NAME) + ")")
        if BY_NAME[name].group in clear:
            raise BadInput(prefix + label(name, naming), value,
                           f"sets {BY_NAME[name].group}, which is also cleared")
    if not values and not clear:
        raise BadInput(prefix[:-1] or "policy", values,
                       "give at least one setting or a group to clear")
    for share, what in (("fault_delay_percent", "fault_delay"),
                        ("fault_abort_percent", "fault_abort")):
        if share in values and what not in values:
            raise BadInput(prefix + label(share, naming), values[share],
                           f"needs {label(what, naming)} beside it")
    return dict(values)


def parse_affinity(value: Any, field: str = "affinity") -> dict[str, Any]:
    """`header:NAME`, `cookie:NAME[:TTL[:PATH]]`, `source-ip` or `query:NAME` as the keyword
    arguments of `traffic.set_session_affinity`."""
    if not isinstance(value, str) or not value:
        raise BadInput(field, value, f"must be one of {AFFINITY_FORMS}")
    kind, _, rest = value.partition(":")
    if kind == "source-ip" and not rest:
        return {"source_ip": True}
    if kind in ("header", "query") and rest:
        return {"header" if kind == "header" else "query_parameter": rest}
    if kind == "cookie" and rest:
        name, _, more = rest.partition(":")
        ttl, _, path = more.partition(":")
        found: dict[str, Any] = {"cookie": name}
        if ttl:
            found["cookie_ttl"] = ttl
        if path:
            found["cookie_path"] = path
        return found
    raise BadInput(field, value, f"must be one of {AFFINITY_FORMS}")


def _renamed(err: BadInput, naming: str, prefix: str) -> BadInput:
    names = {s.param: s.name for s in SETTINGS}
    names.update({"header": "affinity", "cookie": "affinity", "cookie_ttl": "affinity",
                  "cookie_path": "affinity", "query_parameter": "affinity",
                  "session_affinity": "affinity"})
    field = label(names.get(err.field, err.field), naming)
    return BadInput(prefix + field, err.value, err.problem)


def _of(group: str, values: dict[str, Any]) -> dict[str, Any]:
    return {BY_NAME[n].param: v for n, v in values.items() if BY_NAME[n].group == group}


def route_change(vs: dict, values: dict[str, Any], clear: list[str], *,
                 route: str | None, stable: str, canary: str,
                 routes: tuple[str, ...] = ()) -> traffic.Change:
    """One change of the route's timeout, retries and fault (`route`, else each of the
    `routes` that move together, else the canary route): cleared groups first, then what is
    set (fault as a whole: the route's `fault` becomes exactly what is given)."""
    after = vs
    for name in (route,) if route else routes or (None,):
        after = _route_settings(after, values, clear, {"route": name, "stable": stable,
                                                       "canary": canary})
    params = {"settings": {n: v for n, v in values.items() if BY_NAME[n].group in ROUTE_GROUPS},
              "clear": [g for g in clear if g in ROUTE_GROUPS], "route": route or None,
              "stable": stable, "canary": canary, **({"routes": list(routes)}
                                                     if routes and not route else {})}
    return traffic.Change("set_traffic_policy", params, istio.copy_object(vs), after)


def _route_settings(vs: dict, values: dict[str, Any], clear: list[str],
                    where: dict[str, Any]) -> dict:
    after = vs
    if {"timeout", "retries"} & set(clear):
        after = traffic.clear_timeout_and_retries(
            after, timeout="timeout" in clear, retries="retries" in clear, **where).after
    if "fault" in clear:
        after = traffic.clear_fault(after, **where).after
    timing = {**_of("timeout", values), **_of("retries", values)}
    if timing:
        after = traffic.set_timeout_and_retries(after, **timing, **where).after
    fault = _of("fault", values)
    if fault:
        after = traffic.set_fault(after, **fault, **where).after
    return after


def destination_change(dr: dict, values: dict[str, Any], clear: list[str], *,
                       subset: str | None) -> traffic.Change:
    """One change of the DestinationRule's affinity, outlier detection and connection pool."""
    subset = subset or None
    after = dr
    if "affinity" in clear:
        after = traffic.clear_session_affinity(after, subset=subset).after
    for group, key in (("outlier", "outlierDetection"), ("pool", "connectionPool")):
        if group in clear:
            after = traffic.clear_traffic_policy(after, key, subset=subset).after
    if "affinity" in values:
        after = traffic.set_session_affinity(after, **parse_affinity(values["affinity"]),
                                             subset=subset).after
    outlier = _of("outlier", values)
    if outlier:
        after = traffic.set_outlier_detection(after, **outlier, subset=subset).after
    pool = _of("pool", values)
    if pool:
        after = traffic.set_connection_pool(after, **pool, subset=subset).after
    params = {"settings": {n: v for n, v in values.items()
                           if BY_NAME[n].group not in ROUTE_GROUPS},
              "clear": [g for g in clear if g not in ROUTE_GROUPS], "subset": subset}
    return traffic.Change("set_traffic_policy", params, istio.copy_object(dr), after)


def istio_changes(vs: dict, dr: dict | None, values: dict[str, Any], clear: list[str], *,
                  route: str | None = None, subset: str | None = None, stable: str = "v1",
                  canary: str = "v2", naming: str = "plan", prefix: str = "",
                  routes: tuple[str, ...] = ()) -> list[traffic.Change]:
    """The VirtualService change and/or the DestinationRule change that make the policy,
    each refused (naming the setting) before either is written. Route settings go to
    `route`, else to each of the `routes` that move together, else the canary route."""
    route_groups = {BY_NAME[n].group for n in values} | set(clear)
    changes = []
    try:
        if route_groups & set(ROUTE_GROUPS):
            changes.append(route_change(vs, values, clear, route=route, stable=stable,
                                        canary=canary, routes=routes))
        elif route:
            raise BadInput("route", route, "names a VirtualService route, but no timeout, "
                           "retries or fault setting is given")
        if route_groups - set(ROUTE_GROUPS):
            if dr is None:
                raise BadInput("subset", subset, "the service has no DestinationRule to hold "
                               "affinity, outlier detection or connection pool settings")
            changes.append(destination_change(dr, values, clear, subset=subset))
        elif subset:
            raise BadInput("subset", subset, "names a DestinationRule subset, but no affinity, "
                           "outlier or pool setting is given")
    except BadInput as err:
        raise _renamed(err, naming, prefix) from None
    return changes
