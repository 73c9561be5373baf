"""The seed articles' traffic policies, each as canarykit settings and as the Istio fields they
must produce: shared by the CLI, runbook and plan tests, so all three are held to one object.

Also a service with a real shape to apply them to: an FQDN host in namespace `prod`, subsets
`stable`/`canary` selecting pods labelled `version: v1`/`v2`, and two HTTP routes.
"""

from __future__ import annotations

import yaml

RETRY_ON = "5xx,reset,connect-failure,retriable-4xx"
# name -> (settings, the canary route's fields they produce)
ROUTE_SEEDS = {
    "fault-injection": (
        {"fault_delay": "500ms", "fault_delay_percent": 10, "fault_abort": 500,
         "fault_abort_percent": 5},
        {"fault": {"delay": {"fixedDelay": "500ms", "percentage": {"value": 10}},
                   "abort": {"httpStatus": 500, "percentage": {"value": 5}}}}),
    "timeout-and-retries": (
        {"timeout": "3s", "retries": 3, "per_try_timeout": "1s", "retry_on": RETRY_ON},
        {"timeout": "3s", "retries": {"attempts": 3, "perTryTimeout": "1s",
                                      "retryOn": RETRY_ON}}),
}
# name -> (settings, the trafficPolicy fields they produce)
DESTINATION_SEEDS = {
    "consistent-hash-by-header": (
        {"affinity": "header:x-user"},
        {"loadBalancer": {"consistentHash": {"httpHeaderName": "x-user"}}}),
    "outlier-detection": (
        {"outlier_consecutive_5xx": 7, "outlier_interval": "5m", "outlier_base_ejection": "15m",
         "outlier_max_ejection_percent": 100},
        {"outlierDetection": {"consecutive5xxErrors": 7, "interval": "5m",
                              "baseEjectionTime": "15m", "maxEjectionPercent": 100}}),
    "connection-pool": (
        {"max_connections": 100, "connect_timeout": "30ms", "http1_max_pending": 10,
         "http2_max_requests": 1000, "max_requests_per_connection": 10,
         "h2_upgrade_policy": "UPGRADE"},
        {"connectionPool": {"tcp": {"maxConnections": 100, "connectTimeout": "30ms"},
                            "http": {"http1MaxPendingRequests": 10, "http2MaxRequests": 1000,
                                     "maxRequestsPerConnection": 10,
                                     "h2UpgradePolicy": "UPGRADE"}}}),
}
FQDN = "reviews.prod.svc.cluster.local"
VS, DR = yaml.safe_load_all("""
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: prod}
spec:
  hosts: [reviews.prod.svc.cluster.local]
  gateways: [istio-system/public, mesh]
  exportTo: ["."]
  http:
  - name: api-internal
    match:
    - headers:
        x-internal: {exact: "true"}
    route:
    - destination: {host: reviews, subset: stable}
  - name: api
    route:
    - destination: {host: reviews, subset: stable}
      weight: 100
    - destination: {host: reviews, subset: canary}
      weight: 0
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: prod}
spec:
  host: reviews.prod.svc.cluster.local
  trafficPolicy:
    loadBalancer: {simple: LEAST_REQUEST}
  subsets:
  - name: stable
    labels: {app: reviews, version: v1}
  - name: canary
    labels: {app: reviews, version: v2}
""")


def flags(settings: dict) -> list[str]:
    """The settings as `canarykit policy` flags."""
    return [part for name, value in settings.items()
            for part in ("--" + name.replace("_", "-"), str(value))]


def canary_route(vs: dict) -> dict:
    return next(r for r in vs["spec"]["http"] if r["name"] == "api")


def subset_policy(dr: dict, subset: str) -> dict:
    return next(s for s in dr["spec"]["subsets"] if s["name"] == subset).get(
        "trafficPolicy", {})
