"""Where a runbook acts: the service, its cluster and its Prometheus, from the parameters."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from canarykit.analysis import metrics as m
from canarykit.cluster import audit
from canarykit.cluster import client as cluster
from canarykit.core import names
from canarykit.core.errors import BadInput, ClusterError
from canarykit.mesh import versions
from canarykit.routers import Router, check_router, open_router

# Where a Prometheus URL comes from when neither the plan nor the runbook gives one.
PROMETHEUS_URL_ENV = "CANARYKIT_PROMETHEUS_URL"


def resolve_prometheus_url(given: str = "") -> str:
    """The URL given, else $CANARYKIT_PROMETHEUS_URL, else "": never guessed, so a leftover
    local lab cannot stand in for the production Prometheus."""
    return given or os.environ.get(PROMETHEUS_URL_ENV, "")


@dataclass
class Target:
    """The service being rolled out and how to reach its cluster and its metrics."""

    service: str
    namespace: str
    stable: str
    canary: str
    cluster: cluster.Cluster
    prometheus: m.PrometheusSettings | None
    audit_log: Path
    release: str = ""
    router: str = ""  # istio, gateway-api, or "" (detected on first use)
    reporter: str = "destination"
    version_label: str = ""  # "" = the router's
    routes: tuple[str, ...] = ()  # routes moving together; () = the canary route
    opened: Router | None = field(default=None, repr=False, compare=False)


def router_of(target: Target) -> Router:
    """The target's router, opened (and detected, when not named) once per runbook."""
    if target.opened is None:
        target.opened = open_router(target.cluster, target.service, target.stable,
                                    target.canary, target.router, target.routes)
    return target.opened


def route_names(field: str, value: Any) -> tuple[str, ...]:
    """`api,api-internal`: the routes that move together ("" = the canary route)."""
    text_parameter(field, value)
    found = tuple(name.strip() for name in value.split(",") if name.strip())
    for name in found:
        if not names.is_route_name(name):
            raise BadInput(field, name, "must be a route name of letters, digits, '-', '_' "
                           "or '.'")
    if len(set(found)) != len(found):
        raise BadInput(field, value, "names a route twice")
    return found


def text_parameter(field: str, value: Any) -> str:
    if not isinstance(value, str):
        raise BadInput(field, value, "must be a string")
    return value


def flag_parameter(field: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise BadInput(field, value, "must be True or False")
    return value


def renamed(err: BadInput, renames: dict[str, str]) -> BadInput:
    """The same refusal under the notebook parameter's name."""
    return BadInput(renames.get(err.field, err.field), err.value, err.problem)


def connect_target(
    *,
    service: str,
    namespace: str = "",
    stable: str,
    canary: str,
    kubeconfig: str = "",
    context: str = "",
    prometheus_url: str = "",
    prometheus_bearer_token_env: str = "",
    audit_log: str = "",
    release: str = "",
    router: str = "",
    reporter: str = "destination",
    version_label: str = "",
    routes: str = "",
) -> Target:
    """Check the common parameters and connect. `service` is a short name or an FQDN
    (`reviews.prod.svc.cluster.local`, whose namespace an empty `namespace` takes); an empty
    namespace otherwise means the kubeconfig context's, as for kubectl. An empty kubeconfig
    means what it means to kubectl ($KUBECONFIG, ~/.kube/config, or the in-cluster config); an
    empty prometheus_url means $CANARYKIT_PROMETHEUS_URL, or no Prometheus (refused where one
    is queried)."""
    text_parameter("namespace", namespace)
    if namespace:
        names.check_dns_label("namespace", namespace)
    service, named = names.split_service("service", service, namespace or None)
    names.check_dns_label("stable", stable)
    names.check_dns_label("canary", canary)
    check_router("router", router)
    moving = route_names("routes", routes)
    m.check_metrics_source(reporter, version_label)
    if stable == canary:
        raise BadInput("canary", canary, f"must differ from the stable subset {stable!r}")
    for name, value in (("kubeconfig", kubeconfig), ("context", context),
                        ("prometheus_url", prometheus_url), ("audit_log", audit_log),
                        ("prometheus_bearer_token_env", prometheus_bearer_token_env),
                        ("release", release)):
        text_parameter(name, value)
    if kubeconfig and not any(os.path.isfile(p) for p in kubeconfig.split(os.pathsep) if p):
        raise BadInput("kubeconfig", kubeconfig, "no such kubeconfig file")
    prometheus = None
    url = resolve_prometheus_url(prometheus_url)
    if url:
        settings = m.PrometheusSettings(url=url,
                                        bearer_token_env=prometheus_bearer_token_env or None)
        try:
            settings.validate()
        except BadInput as err:
            raise renamed(err, {"prometheus.url": "prometheus_url",
                                 "prometheus.bearer_token_env": "prometheus_bearer_token_env",
                                 }) from None
        if prometheus_bearer_token_env and not os.environ.get(prometheus_bearer_token_env):
            raise BadInput("prometheus_bearer_token_env", prometheus_bearer_token_env,
                           "names an environment variable that is not set or empty")
        prometheus = settings
    try:
        connected = cluster.connect(kubeconfig or None, context or None, named)
    except BadInput as err:
        raise renamed(err, {"--kubeconfig": "kubeconfig", "--context": "context",
                             "--namespace": "namespace"}) from None
    return Target(service, connected.namespace, stable, canary, connected, prometheus,
                  Path(audit_log) if audit_log else audit.default_audit_log(), release, router,
                  reporter=reporter, version_label=version_label, routes=moving)


def subset_versions(target: Target, version_label_key: str = ""
                    ) -> tuple[versions.SubsetVersion, versions.SubsetVersion]:
    """The stable and canary versions as the metrics carry them (`versions.SubsetVersion`):
    for Istio read from the DestinationRule's subsets (a subset's name is the user's, its
    pods' version label is what Istio's metrics carry); for Gateway API the backend Services'
    names."""
    versions.check_label_key("version_label_key", version_label_key)
    try:
        router = router_of(target)
    except ClusterError:  # nothing routes the service (yet): its DestinationRule says
        if target.router == "gateway-api":
            raise
        dr = cluster.find_destination_rule(target.cluster, target.service)
        return versions.subset_versions(dr, target.stable, target.canary, version_label_key)
    return router.versions(router.read(), version_label_key)


def metrics_selector(target: Target, found: tuple[versions.SubsetVersion, versions.SubsetVersion]
                     ) -> m.MetricsSelector:
    """The target's series, stable and canary by the versions `subset_versions` found, told
    apart by the label its router's versions differ in."""
    stable, canary = found
    label = target.version_label or (
        target.opened.version_label() if target.opened else "destination_version")
    return m.MetricsSelector(service=target.service, namespace=target.namespace,
                             reporter=target.reporter, version_label=label,
                             stable=stable.version, canary=canary.version,
                             stable_subset=stable.subset, canary_subset=canary.subset).validate()


def prometheus_client(target: Target) -> m.Client:
    """The target's Prometheus; refused, never guessed, when no URL was given."""
    if target.prometheus is None:
        raise BadInput("prometheus_url", "", "is required to query Prometheus: give its URL "
                       "(the runbook parameter prometheus_url, the plan's prometheus.url, or "
                       f"${PROMETHEUS_URL_ENV})")
    return m.connect(target.prometheus)
