"""The Istio router: a VirtualService routes the service, DestinationRule subsets are versions."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from canarykit.cluster import client as cluster
from canarykit.cluster.state import read_promotion, with_promotion, with_state
from canarykit.core.errors import BadInput, ClusterError
from canarykit.mesh import istio, policy, traffic, validate, versions
from canarykit.routers import ISTIO, Objects, on_each_route

# The match routes the internal-canary phase adds, by what they match; promote removes them.
INTERNAL_ROUTES = ("canary-internal-header", "canary-internal-cookie", "canary-internal-query",
                   "canary-internal-source")


def routes_service(kube: cluster.Cluster, service: str) -> str:
    """`VirtualService NS/NAME` when one routes `service`, else ""."""
    try:
        return istio.object_ref(cluster.find_virtual_service(kube, service))
    except cluster.NotFound:
        return ""


class IstioRouter:
    name = ISTIO
    kind = "VirtualService"

    def __init__(self, kube: cluster.Cluster, service: str, stable: str, canary: str,
                 routes: tuple[str, ...] = ()) -> None:
        self.cluster, self.service, self.stable, self.canary = kube, service, stable, canary
        self.routes = tuple(routes)  # the http routes that move together; () = the canary one

    def _first(self) -> str | None:
        return self.routes[0] if self.routes else None

    def _earliest(self, route: dict[str, Any]) -> str | None:
        """The moving route that comes first: a match route goes in front of it, so matched
        users reach the canary before any of the moving routes can take them."""
        names = [rule.get("name") for rule in istio.http_routes(route)]
        present = [name for name in self.routes if name in names]
        return min(present, key=names.index) if present else self._first()

    def _each(self, route: dict[str, Any], operation: Any) -> traffic.Change:
        return on_each_route(self.routes, route, operation)

    def read(self) -> Objects:
        return Objects(cluster.find_virtual_service(self.cluster, self.service),
                       cluster.find_destination_rule(self.cluster, self.service))

    def route(self) -> dict[str, Any]:
        return cluster.find_virtual_service(self.cluster, self.service)

    def problems(self, objects: Objects) -> list[str]:
        found = [msg.format() for msg in validate.analyze([objects.route, objects.extra or {}])
                 if msg.level == "Error"]
        try:
            self.set_canary_weight(objects.route, 0, objects.extra)
        except BadInput as exc:
            found.append(f"cannot split traffic: {exc}")
        return found

    def describe(self, objects: Objects) -> dict[str, Any]:
        dr = objects.extra or {}
        return {"virtualService": istio.object_ref(objects.route),
                "destinationRule": istio.object_ref(dr),
                "subsets": istio.destination_rule_subsets(dr)}

    def weights(self, route: dict[str, Any]) -> dict[str, int] | None:
        try:
            index = istio.find_canary_route(route, self.stable, self.canary, self._first())
        except BadInput:
            return None
        found = istio.subset_weights(istio.http_routes(route)[index])
        return {self.stable: int(found.get(self.stable, 0)),
                self.canary: int(found.get(self.canary, 0))}

    def diverted(self, route: dict[str, Any]) -> list[str]:
        """What sends the canary traffic besides the split (match routes that send only to
        it, mirroring): while any does, its share of traffic is not its weight."""
        found = []
        for index, rule in enumerate(istio.http_routes(route)):
            subsets = istio.route_subsets(rule)
            if rule.get("match") and subsets and all(s == self.canary for s in subsets):
                found.append(istio.route_label(route, index))
            if "mirror" in rule or "mirrors" in rule:
                found.append(f"mirroring on {istio.route_label(route, index)}")
        return found

    def snapshot(self, objects: Objects) -> dict[str, Any]:
        return cluster.istio_snapshot(objects.route, objects.extra or {})

    def versions(self, objects: Objects, label_key: str
                 ) -> tuple[versions.SubsetVersion, versions.SubsetVersion]:
        return versions.subset_versions(objects.extra or {}, self.stable, self.canary, label_key)

    def version_label(self) -> str:
        return "destination_version"

    def backend_labels(self, objects: Objects) -> dict[str, dict[str, str]]:
        """version -> the pod labels that select it: the Service's selector and the subset's
        labels (a version missing from the DestinationRule is left out)."""
        selector = service_selector(self.cluster, self.service)
        subsets = {s.get("name"): s.get("labels") or {}
                   for s in ((objects.extra or {}).get("spec") or {}).get("subsets") or []
                   if isinstance(s, dict)}
        return {name: {**selector, **subsets[name]} for name in (self.stable, self.canary)
                if name in subsets}

    def missing_backend(self, objects: Objects, name: str) -> str:
        return f"subset {name} is not defined in {istio.object_ref(objects.extra or {})}"

    def set_canary_weight(self, route: dict[str, Any], weight: int,
                          extra: dict[str, Any] | None) -> traffic.Change:
        return self._each(route, lambda vs, name: traffic.set_canary_weight(
            vs, weight, stable=self.stable, canary=self.canary, route=name, dr=extra))

    def add_match_route(self, route: dict[str, Any], name: str, extra: dict[str, Any] | None,
                        *, header: str = "", value: str = "", match: str = "exact",
                        cookie: tuple[str, str] | None = None, query: str = "",
                        source_labels: dict[str, str] | None = None) -> traffic.Change:
        where = {"name": name, "canary": self.canary, "stable": self.stable, "dr": extra,
                 "route": self._earliest(route)}
        if cookie is not None:
            pattern = traffic.cookie_regex(cookie[0], cookie[1] or None)
            return traffic.add_match_route(route, cookie_regex=pattern, **where)
        if source_labels is not None:
            return traffic.add_match_route(route, source_labels=source_labels, **where)
        if query:
            return traffic.add_match_route(route, query_parameter=query, match=match,
                                           value=value, **where)
        return traffic.add_match_route(route, header=header, match=match, value=value, **where)

    def switch_all_traffic(self, route: dict[str, Any], to: str,
                           extra: dict[str, Any] | None) -> traffic.Change:
        known = istio.destination_rule_subsets(extra or {})
        if to not in known:
            raise BadInput("to_subset", to, f"is not a subset of {istio.object_ref(extra or {})} "
                           f"(subsets: {', '.join(map(str, known))})")
        return self._each(route, lambda vs, name: traffic.switch_all_traffic(
            vs, to, stable=self.stable, canary=self.canary, route=name, dr=extra))

    def set_mirror(self, route: dict[str, Any], percent: float,
                   extra: dict[str, Any] | None) -> traffic.Change:
        return self._each(route, lambda vs, name: traffic.set_mirror(
            vs, subset=self.canary, percentage=percent, stable=self.stable, route=name, dr=extra))

    def clear_mirror(self, route: dict[str, Any]) -> traffic.Change:
        return self._each(route, lambda vs, name: traffic.clear_mirror(
            vs, stable=self.stable, canary=self.canary, route=name))

    def promote(self, route: dict[str, Any], extra: dict[str, Any] | None,
                release: str, move: bool = False) -> traffic.Change:
        """Internal routes gone, mirror and fault cleared, all to the canary (with `move`,
        every other route still on the stable subset too), the rollout ended: one write."""
        after, removed = route, []
        for name in INTERNAL_ROUTES:
            change = traffic.remove_match_route(after, name)
            if change.changed:
                removed.append(name)
            after = change.after
        after = self.clear_mirror(after).after
        after = self._each(after, lambda vs, name: traffic.clear_fault(
            vs, stable=self.stable, canary=self.canary, route=name)).after
        after = self.switch_all_traffic(after, self.canary, extra).after
        moved = []
        if move:
            change = traffic.move_routes(after, stable=self.stable, canary=self.canary,
                                         host=self.service)
            after, moved = change.after, change.params["moved"]
        params = {"stable": self.stable, "canary": self.canary, "release": release,
                  "removed_routes": removed, "moved_routes": moved,
                  **({"routes": list(self.routes)} if self.routes else {})}
        ended = with_promotion(with_state(after, None), release, self.stable, self.canary)
        return traffic.Change("promote", params, istio.copy_object(route), ended)

    def left_on_stable(self, route: dict[str, Any]) -> list[str]:
        namespace = istio.namespace_of(route)
        return [istio.route_label(route, index)
                for index, rule in enumerate(istio.http_routes(route))
                if any(traffic.sends_to(entry, self.stable, self.service, namespace)
                       for entry in istio.route_destinations(rule))]

    def policy_changes(self, objects: Objects, values: dict[str, Any], clear: list[str], *,
                       route: str | None = None, subset: str | None = None,
                       naming: str = "plan", prefix: str = "") -> list[traffic.Change]:
        return policy.istio_changes(objects.route, objects.extra, values, clear,
                                    route=route, routes=self.routes,
                                    subset=subset, stable=self.stable, canary=self.canary,
                                    naming=naming, prefix=prefix)

    def rollback(self, *, dry_run: bool = False,
                 audit_log: Any = None) -> list[cluster.AppliedChange]:
        return cluster.rollback(self.cluster, self.service, dry_run=dry_run,
                                audit_log=audit_log)

    def status(self) -> cluster.ServiceStatus:
        route = self.route()
        found = cluster.status(self.cluster, self.service, route)
        return replace(found, promotion=promotion_status(route, IstioRouter, self.service))


def promotion_status(route: dict[str, Any], implementation: Any,
                     service: str) -> dict[str, Any] | None:
    """The last promotion on the routing object and the routes still sending to the old
    version (to move before it is scaled down)."""
    found = read_promotion(route)
    if found is None:
        return None
    old = implementation(None, service, found["from"], found["to"])
    return {**found, "stillOnOld": old.left_on_stable(route)}


def service_selector(kube: cluster.Cluster, service: str) -> dict[str, str]:
    """The Service's pod selector ({} when there is no such Service: the version's own labels
    alone select its pods)."""
    from kubernetes import client as k8s  # here: not every runbook kernel needs it

    try:
        found = k8s.CoreV1Api(kube.api).read_namespaced_service(
            service.split(".")[0], kube.namespace)
    except k8s.ApiException as exc:
        if exc.status == 404:
            return {}
        raise ClusterError(f"cannot read Service {kube.namespace}/{service}: "
                           f"{cluster.api_error_text(exc)}") from None
    return dict(found.spec.selector or {})
