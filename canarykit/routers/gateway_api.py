"""The Gateway API router: an HTTPRoute (or GRPCRoute) routes the service; each version is
a Service of its own (`reviews-v1`, `reviews-v2`), one of the route's `backendRefs`.

Only what the rollout manages is changed: the weights of the canary rule's backendRefs, the
rules and mirror filters canarykit adds. Everything else in the route (other rules, foreign
filters such as `ExtensionRef`, matches, `parentRefs`) is carried through untouched, and the
rollback snapshot is the route's rules as they were.
"""

from __future__ import annotations

from typing import Any

from canarykit.cluster import client as cluster
from canarykit.cluster.state import read_state, with_promotion, with_state
from canarykit.core.errors import BadInput, ClusterError
from canarykit.core.names import service_name
from canarykit.mesh import gateway, istio, policy, traffic, validate, versions
from canarykit.routers import GATEWAY_API, Objects, on_each_route
from canarykit.routers.istio import promotion_status, service_selector

ROUTE_KINDS = ("HTTPRoute", "GRPCRoute")


def _parented_by(route: dict[str, Any], service: str) -> bool:
    """A mesh (GAMMA) route of `service`: a parentRef to the Service itself."""
    for ref in (route.get("spec") or {}).get("parentRefs") or []:
        if (isinstance(ref, dict) and ref.get("kind") == "Service" and ref.get("group", "") == ""
                and ref.get("name") == service_name(service)):
            return True
    return False


def _routes_by_name_or_parent(kube: cluster.Cluster, service: str, *, named_only: bool = False,
                              forbidden_is_none: bool = False) -> list[dict[str, Any]]:
    """The routes of `service`: those named after it (one GET per kind), else, unless
    `named_only`, those whose parentRef is it (one LIST per kind). A kind the cluster does not
    serve (404) has none; with `forbidden_is_none` so has a kind we may not read (403)."""
    def unknowable(exc: ClusterError) -> bool:
        return " 404 " in f" {exc} " or (forbidden_is_none and "(403)" in str(exc))

    named: list[dict[str, Any]] = []
    for kind in ROUTE_KINDS:
        try:
            found = cluster.get_object(kube, kind, service_name(service))
        except cluster.NotFound:
            continue
        except ClusterError as exc:
            if unknowable(exc):
                continue
            raise
        if _parented_by(found, service):
            named.append(found)
    if named or named_only:
        return named
    listed: list[dict[str, Any]] = []
    for kind in ROUTE_KINDS:
        try:
            listed += [r for r in cluster.list_objects(kube, kind) if _parented_by(r, service)]
        except ClusterError as exc:
            if not unknowable(exc):
                raise
    return listed


def routes_service(kube: cluster.Cluster, service: str, *, beside_istio: bool = False) -> str:
    """`HTTPRoute NS/NAME` when a Gateway API route has the Service as parent, else "".
    `beside_istio`: a VirtualService routes it already; only the routes named after the
    service are looked for, and Gateway API objects we may not read count as none (a Role
    for the Istio router need not grant them)."""
    found = _routes_by_name_or_parent(kube, service, named_only=beside_istio,
                                      forbidden_is_none=beside_istio)
    return ", ".join(istio.object_ref(r) for r in found)


def find_route(kube: cluster.Cluster, service: str) -> dict[str, Any]:
    found = _routes_by_name_or_parent(kube, service)
    if not found:
        raise ClusterError(f"no HTTPRoute or GRPCRoute has Service {service} as parent in "
                           f"namespace {kube.namespace}")
    if len(found) > 1:
        raise ClusterError(f"several routes have Service {service} as parent: "
                           f"{', '.join(istio.object_ref(r) for r in found)}; name one")
    return found[0]


class GatewayRouter:
    name = GATEWAY_API
    kind = "HTTPRoute"

    def __init__(self, kube: cluster.Cluster, service: str, stable: str, canary: str,
                 routes: tuple[str, ...] = ()) -> None:
        self.cluster, self.service, self.stable, self.canary = kube, service, stable, canary
        self.routes = tuple(routes)  # rule names that move together; () = the canary rule

    def _first(self) -> str | None:
        return self.routes[0] if self.routes else None

    def _each(self, route: dict[str, Any], operation: Any) -> traffic.Change:
        return on_each_route(self.routes, route, operation)

    def read(self) -> Objects:
        return Objects(self.route())

    def route(self) -> dict[str, Any]:
        found = find_route(self.cluster, self.service)
        self.kind = found["kind"]
        return found

    def problems(self, objects: Objects) -> list[str]:
        found = [m.format() for m in validate.validate_object(objects.route)
                 if m.level == "Error"]
        try:
            self.set_canary_weight(objects.route, 0, None)
        except BadInput as exc:
            found.append(f"cannot split traffic: {exc}")
        return found

    def describe(self, objects: Objects) -> dict[str, Any]:
        return {"route": istio.object_ref(objects.route),
                "backends": gateway.backend_services(objects.route)}

    def weights(self, route: dict[str, Any]) -> dict[str, int] | None:
        try:
            return gateway.weights_percent(route, self.stable, self.canary, self._first())
        except BadInput:
            return None

    def diverted(self, route: dict[str, Any]) -> list[str]:
        """canarykit's match rules and mirror filters to the canary: while any is there, the
        canary's share of traffic is not its weight."""
        found = []
        for index, rule in enumerate(gateway.rules(route)):
            backends = gateway.rule_backends(rule)
            if rule.get("matches") and backends and set(backends) == {self.canary}:
                found.append(gateway.rule_label(route, index))
            if any(f.get("type") == "RequestMirror" for f in rule.get("filters") or []
                   if isinstance(f, dict)):
                found.append(f"mirroring on {gateway.rule_label(route, index)}")
        return found

    def snapshot(self, objects: Objects) -> dict[str, Any]:
        return {"route": istio.managed_fields(objects.route)}

    def versions(self, objects: Objects, label_key: str
                 ) -> tuple[versions.SubsetVersion, versions.SubsetVersion]:
        """Each version is its own Service: the metrics tell them apart by
        destination_service_name, whatever the pods' version labels say."""
        return (versions.SubsetVersion(self.stable, self.stable, "destination_service_name"),
                versions.SubsetVersion(self.canary, self.canary, "destination_service_name"))

    def version_label(self) -> str:
        return "destination_service_name"

    def backend_labels(self, objects: Objects) -> dict[str, dict[str, str]]:
        """backend Service -> its selector (a backend with no Service is left out)."""
        found = {}
        for name in (self.stable, self.canary):
            selector = service_selector(self.cluster, name)
            if selector:
                found[name] = selector
        return found

    def missing_backend(self, objects: Objects, name: str) -> str:
        return f"backend Service {self.cluster.namespace}/{name} does not exist or selects no pods"

    def set_canary_weight(self, route: dict[str, Any], weight: int,
                          extra: dict[str, Any] | None) -> traffic.Change:
        return self._each(route, lambda obj, rule: gateway.set_canary_weight(
            obj, weight, stable=self.stable, canary=self.canary, rule=rule))

    def add_match_route(self, route: dict[str, Any], name: str, extra: dict[str, Any] | None,
                        *, header: str = "", value: str = "", match: str = "exact",
                        cookie: tuple[str, str] | None = None, query: str = "",
                        source_labels: dict[str, str] | None = None) -> traffic.Change:
        if source_labels is not None:
            raise BadInput("source_labels", source_labels, "Gateway API routes cannot match "
                           "the calling workload; use the Istio router (sourceLabels)")
        if match == "prefix":  # Gateway API has Exact and RegularExpression only
            match, value = "regex", traffic.prefix_regex(value)
        kind = {"exact": "Exact", "regex": "RegularExpression"}.get(match)
        if kind is None:
            raise BadInput("match", match, "must be exact, prefix or regex")
        condition = [{"type": kind if value else "RegularExpression", "name": header or query,
                      "value": value or ".*"}]
        return gateway.add_match_rule(route, name, canary=self.canary, stable=self.stable,
                                      headers=condition if header else None,
                                      query_params=condition if query else None,
                                      cookie=(cookie[0], cookie[1] or None) if cookie else None,
                                      rule=self._first())

    def switch_all_traffic(self, route: dict[str, Any], to: str,
                           extra: dict[str, Any] | None) -> traffic.Change:
        return self._each(route, lambda obj, rule: gateway.switch_all_traffic(
            obj, to, stable=self.stable, canary=self.canary, rule=rule))

    def set_mirror(self, route: dict[str, Any], percent: float,
                   extra: dict[str, Any] | None) -> traffic.Change:
        return self._each(route, lambda obj, rule: gateway.set_mirror(
            obj, canary=self.canary, stable=self.stable, percent=percent, rule=rule))

    def clear_mirror(self, route: dict[str, Any]) -> traffic.Change:
        return self._each(route, lambda obj, rule: gateway.clear_mirror(
            obj, canary=self.canary, stable=self.stable, rule=rule))

    def promote(self, route: dict[str, Any], extra: dict[str, Any] | None,
                release: str, move: bool = False) -> traffic.Change:
        change = self._each(route, lambda obj, rule: gateway.promote_change(
            obj, stable=self.stable, canary=self.canary, release=release, rule=rule))
        after, moved = change.after, []
        if move:
            moving = gateway.move_rules(after, stable=self.stable, canary=self.canary)
            after, moved = moving.after, moving.params["moved"]
        ended = with_promotion(with_state(after, None), release, self.stable, self.canary)
        return traffic.Change("promote", {**change.params, "moved_routes": moved},
                              change.before, ended)

    def left_on_stable(self, route: dict[str, Any]) -> list[str]:
        return gateway.routes_to(route, self.stable)

    def policy_changes(self, objects: Objects, values: dict[str, Any], clear: list[str], *,
                       route: str | None = None, subset: str | None = None,
                       naming: str = "plan", prefix: str = "") -> list[traffic.Change]:
        """Only the canary rule's request timeout: the standard HTTPRoute has no retries,
        fault injection, session affinity, outlier detection or connection pool."""
        for name, value in [*values.items(), *(("clear", group) for group in clear)]:
            group = value if name == "clear" else policy.BY_NAME[name].group
            if group != "timeout":
                raise BadInput(prefix + policy.label(name, naming), value,
                               f"{group} is not available with the Gateway API router (the "
                               "standard HTTPRoute has only timeouts); use the Istio router")
        if subset:
            raise BadInput(prefix + policy.label("subset", naming), subset,
                           "names a DestinationRule subset; the Gateway API router has none")
        if objects.route.get("kind") == "GRPCRoute":
            raise BadInput(prefix + policy.label("timeout", naming), values.get("timeout"),
                           "a GRPCRoute has no timeouts in Gateway API's standard channel")
        after = istio.copy_object(objects.route)
        for name in (route,) if route else self.routes or (None,):
            try:
                rule = gateway.rules(after)[gateway.find_canary_rule(
                    after, self.stable, self.canary, name)]
            except BadInput as err:
                field = "route" if err.field == "rule" else err.field
                raise BadInput(prefix + policy.label(field, naming), err.value,
                               err.problem) from None
            self._set_request_timeout(rule, values, clear, naming, prefix)
        params = {"settings": dict(values), "clear": list(clear), "route": route or None}
        return [traffic.Change("set_traffic_policy", params, istio.copy_object(objects.route),
                               after)]

    @staticmethod
    def _set_request_timeout(rule: dict[str, Any], values: dict[str, Any], clear: list[str],
                             naming: str, prefix: str) -> None:
        """`timeouts.request` of one rule (clearing keeps a backendRequest timeout)."""
        timeouts = dict(rule.get("timeouts") or {})
        if "timeout" in clear:
            timeouts.pop("request", None)
        if "timeout" in values:
            request = values["timeout"]
            seconds = gateway.duration_seconds(request)
            backend = gateway.duration_seconds(timeouts.get("backendRequest"))
            if seconds is None or seconds < 0.001:
                raise BadInput(prefix + policy.label("timeout", naming), request,
                               "must be a Gateway API duration of at least 1ms, such as 3s, "
                               "500ms or 1m30s")
            if backend is not None and backend > seconds:
                raise BadInput(prefix + policy.label("timeout", naming), request,
                               "must not be shorter than the rule's backendRequest timeout "
                               f"({timeouts['backendRequest']})")
            timeouts["request"] = request
        if timeouts:
            rule["timeouts"] = timeouts
        else:
            rule.pop("timeouts", None)

    def rollback(self, *, dry_run: bool = False,
                 audit_log: Any = None) -> list[cluster.AppliedChange]:
        """The route's rules as they were before the rollout, and the rollout ended, in one
        write: a route is one object, so there is no half-way state to finish later."""
        route = self.route()
        state = read_state(route)
        if state is None:
            raise ClusterError(f"no rollout in progress on {istio.object_ref(route)}: nothing "
                               "to roll back")
        restored = traffic.restore_managed_fields(route, state.snapshot["route"])
        change = traffic.Change("rollback", {"release": state.release},
                                restored.before, with_state(restored.after, None))
        return [cluster.apply_change(self.cluster, change, dry_run=dry_run,
                                     audit_log=audit_log)]

    def status(self) -> cluster.ServiceStatus:
        route = self.route()
        routes = [
            cluster.RouteStatus(
                index=index, name=rule.get("name", ""), match=rule.get("matches", []),
                destinations=[cluster.DestinationStatus(ref.get("name", ""), ref.get("weight", 1))
                              for ref in rule.get("backendRefs") or []],
                settings={k: rule[k] for k in ("filters", "timeouts") if k in rule})
            for index, rule in enumerate(gateway.rules(route))]
        return cluster.ServiceStatus(
            service=self.service, namespace=self.cluster.namespace, server=self.cluster.server,
            virtual_service=istio.object_ref(route),
            virtual_service_resource_version=route["metadata"].get("resourceVersion"),
            destination_rule="", subsets=[], traffic_policy=None, routes=routes,
            rollout=read_state(route), router=GATEWAY_API,
            promotion=promotion_status(route, GatewayRouter, self.service))
