"""How a rollout moves traffic: one small interface, two implementations.

The phases, the driver and the report never touch a VirtualService or an HTTPRoute: they ask a
`Router` (in the spirit of Flagger's `pkg/router/router.go` and Argo Rollouts' traffic routers)
for the change an operation makes to the service's routing object, and apply it through
`cluster.apply_change` (validated, dry-run on the server, optimistic concurrency, audited).

- `istio`: a VirtualService routes the service; versions are DestinationRule subsets.
- `gateway-api`: an HTTPRoute (or GRPCRoute) routes it; versions are separate Services, its
  `backendRefs`.

The router is the plan's `router:`, else detected from what routes the service; a service
routed by both is refused (Istio does not support mixing them on one workload).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from canarykit.core.errors import BadInput, ClusterError

if TYPE_CHECKING:
    from canarykit.cluster.client import AppliedChange, Cluster, ServiceStatus
    from canarykit.mesh.traffic import Change
    from canarykit.mesh.versions import SubsetVersion

ISTIO = "istio"
GATEWAY_API = "gateway-api"
ROUTERS = (ISTIO, GATEWAY_API)


@dataclass
class Objects:
    """What a router read in one go: the object that routes the service (and carries the
    rollout state) and what it needs beside it (the DestinationRule for Istio)."""

    route: dict[str, Any]
    extra: dict[str, Any] | None = None


class Router(Protocol):
    """One service's traffic, as a rollout sees it. `stable` and `canary` are what the router
    calls versions: subset names for Istio, backend Service names for Gateway API."""

    name: str
    kind: str  # the kind of `Objects.route`
    cluster: Cluster
    service: str
    stable: str
    canary: str
    routes: tuple[str, ...]

    def read(self) -> Objects: ...
    def route(self) -> dict[str, Any]: ...
    def problems(self, objects: Objects) -> list[str]: ...
    def describe(self, objects: Objects) -> dict[str, Any]: ...
    def weights(self, route: dict[str, Any]) -> dict[str, int] | None: ...
    def diverted(self, route: dict[str, Any]) -> list[str]: ...
    def snapshot(self, objects: Objects) -> dict[str, Any]: ...
    def versions(self, objects: Objects, label_key: str
                 ) -> tuple[SubsetVersion, SubsetVersion]: ...
    def version_label(self) -> str: ...
    def backend_labels(self, objects: Objects) -> dict[str, dict[str, str]]: ...
    def missing_backend(self, objects: Objects, name: str) -> str: ...
    def set_canary_weight(self, route: dict[str, Any], weight: int,
                          extra: dict[str, Any] | None) -> Change: ...
    def add_match_route(self, route: dict[str, Any], name: str, extra: dict[str, Any] | None,
                        *, header: str = "", value: str = "", match: str = "exact",
                        cookie: tuple[str, str] | None = None, query: str = "",
                        source_labels: dict[str, str] | None = None) -> Change: ...
    def switch_all_traffic(self, route: dict[str, Any], to: str,
                           extra: dict[str, Any] | None) -> Change: ...
    def set_mirror(self, route: dict[str, Any], percent: float,
                   extra: dict[str, Any] | None) -> Change: ...
    def clear_mirror(self, route: dict[str, Any]) -> Change: ...
    def promote(self, route: dict[str, Any], extra: dict[str, Any] | None,
                release: str, move: bool = False) -> Change: ...
    def left_on_stable(self, route: dict[str, Any]) -> list[str]: ...
    def policy_changes(self, objects: Objects, values: dict[str, Any], clear: list[str], *,
                       route: str | None = None, subset: str | None = None,
                       naming: str = "plan", prefix: str = "") -> list[Change]: ...
    def rollback(self, *, dry_run: bool = False,
                 audit_log: Any = None) -> list[AppliedChange]: ...
    def status(self) -> ServiceStatus: ...


def on_each_route(routes: tuple[str, ...], route: dict[str, Any],
                  operation: Callable[[dict[str, Any], str | None], Change]) -> Change:
    """`operation(object, route_name)` on each route that moves (the canary route when
    `routes` is empty), as one change of the routing object: one write moves them all."""
    from canarykit.mesh import istio
    from canarykit.mesh.traffic import Change

    after, change = route, None
    for name in routes or (None,):
        change = operation(after, name)
        after = change.after
    params = {**change.params, "routes": list(routes)} if routes else change.params
    return Change(change.operation, params, istio.copy_object(route), after)


def check_router(field: str, value: Any) -> str:
    """"" (detect), istio or gateway-api."""
    if value not in ("", *ROUTERS):
        raise BadInput(field, value, f"must be one of {', '.join(ROUTERS)} (or empty: detected "
                       "from what routes the service)")
    return value


def detect(cluster: Cluster, service: str) -> str:
    """Which API routes `service`: refused when both or neither do."""
    from canarykit.routers import gateway_api, istio

    by_istio = istio.routes_service(cluster, service)
    by_gateway = gateway_api.routes_service(cluster, service, beside_istio=bool(by_istio))
    if by_istio and by_gateway:
        raise ClusterError(
            f"{service} is routed by both {by_istio} and {by_gateway}: Istio does not support "
            "VirtualService and HTTPRoute on one workload; remove one, or name the router "
            "(plan `router:`)")
    if by_gateway:
        return GATEWAY_API
    if by_istio:
        return ISTIO
    raise ClusterError(f"no VirtualService and no HTTPRoute routes {service} in namespace "
                       f"{cluster.namespace}")


def open_router(cluster: Cluster, service: str, stable: str, canary: str,
                name: str = "", routes: tuple[str, ...] = ()) -> Router:
    """The service's router: `name` (istio, gateway-api), or detected. `routes` name the
    routes (Istio http routes, Gateway API rules) that move together; () = the canary one."""
    from canarykit.routers import gateway_api, istio

    check_router("router", name)
    chosen = name or detect(cluster, service)
    implementation = istio.IstioRouter if chosen == ISTIO else gateway_api.GatewayRouter
    return implementation(cluster, service, stable, canary, routes)


def adopt_rollout(router: Router, route: dict[str, Any], *, versions: bool = False) -> Any:
    """The rollout in progress on `route` (or None), its routes that move together taken by
    the router when it was given none (refused when it names others); with `versions` its
    stable and canary too (a command acting within whatever rollout is in progress)."""
    from canarykit.cluster.state import read_state

    state = read_state(route)
    if state is None:
        return None
    if state.routes and router.routes and set(router.routes) != set(state.routes):
        raise BadInput("routes", ",".join(router.routes), "the rollout in progress (release "
                       f"{state.release}) moves routes {', '.join(state.routes)} together")
    router.routes = router.routes or tuple(state.routes)
    if versions:
        router.stable, router.canary = state.stable, state.canary
    return state


def set_traffic_policy(router: Router, values: dict[str, Any], clear: list[str], *,
                       route: str | None = None, subset: str | None = None,
                       dry_run: bool = False, audit_log: Any = None, release: str = "",
                       naming: str = "plan", prefix: str = "") -> list[AppliedChange]:
    """Set and clear traffic policy (`mesh.policy`) as `apply_in_rollout` does; during a
    rollout the policy follows its stable and canary."""
    objects = router.read()
    state = adopt_rollout(router, objects.route, versions=True)
    options = {"route": route, "subset": subset, "naming": naming, "prefix": prefix}
    return apply_in_rollout(router, objects, state,
                            lambda found: router.policy_changes(found, values, clear, **options),
                            dry_run=dry_run, audit_log=audit_log, release=release)


def apply_in_rollout(router: Router, objects: Objects, state: Any,
                     changes_of: Callable[[Objects], list[Change]], *, dry_run: bool = False,
                     audit_log: Any = None, release: str = "") -> list[AppliedChange]:
    """The changes `changes_of` makes on the objects (`objects` as just read, `state` their
    rollout or None), each refused before any write. When something changes and no rollout is
    in progress, the server dry-runs each change and the rollout begins (its snapshot is what
    `rollback` restores). Then each is applied through `cluster.apply_change` (validated,
    dry-run on the server, optimistic concurrency, audited), made again on the objects as
    they are after the writes before it."""
    from canarykit.cluster import client as cluster

    changes = changes_of(objects)
    if dry_run:
        return [cluster.apply_change(router.cluster, change, dry_run=True) for change in changes]
    written = False
    if state is None and any(change.changed for change in changes):
        for change in changes:  # the server's word before the rollout begins
            cluster.apply_change(router.cluster, change, dry_run=True)
        cluster.start_rollout(router.cluster, objects.route, router.snapshot(objects),
                              stable=router.stable, canary=router.canary, release=release,
                              audit_log=audit_log, routes=router.routes)
        written = True
    applied = []
    for index in range(len(changes)):
        change = changes_of(router.read())[index] if written else changes[index]
        applied.append(cluster.apply_change(router.cluster, change, audit_log=audit_log))
        written = written or change.changed
    return applied
