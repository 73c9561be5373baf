"""The offline analyzer: check VirtualService and DestinationRule objects the way Istio's
validating webhook and `istioctl analyze` would, and Gateway API HTTPRoutes and GRPCRoutes the
way the API server's schema and CEL rules would, before anything reaches a cluster.

`validate_object` makes the single-object checks (what the webhook or the API server rejects,
plus warnings); `analyze` adds the checks that need several objects (a route naming a subset
that no DestinationRule defines, a backend Service that is not there, one workload routed by
both a VirtualService and an HTTPRoute). Messages carry Istio's codes where the check is
Istio's own (IST0106 for any schema error), canarykit's CK codes otherwise.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import re
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import re2

from canarykit.core import yamlsafe
from canarykit.core.durations import parse_duration
from canarykit.core.errors import BadInput, ExitCode, exit_code_for
from canarykit.core.names import host_fqdn as _host_fqdn
from canarykit.core.names import (
    is_dns1123_label,
    is_dns1123_subdomain,
    is_header_name,
    is_label_key,
    is_label_value,
)
from canarykit.mesh.gateway import (
    GATEWAY_GROUP,
    MATCH_TYPES,
    MAX_CONDITIONS,
    MAX_MATCHES,
    MAX_RULES,
    MAX_TOTAL_MATCHES,
    MAX_WEIGHT,
    duration_seconds,
)
from canarykit.mesh.istio import (
    API_VERSIONS,
    CLAIM_HEADER,
    HASH_KEYS,
    KINDS,
    RETRY_ON_POLICIES,
    STRING_MATCH_KINDS,
)

ERROR, WARNING, INFO = "Error", "Warning", "Info"
SCHEMA_ERROR = "IST0106"  # SchemaValidationError
REFERENCE_NOT_FOUND = "IST0101"  # ReferencedResourceNotFound
UNREACHABLE_RULE = "IST0130"  # VirtualServiceUnreachableRule
INEFFECTIVE_MATCH = "IST0131"  # VirtualServiceIneffectiveMatch
CONFLICTING_HOSTS = "IST0109"  # ConflictingMeshGatewayVirtualServiceHosts
WEIGHT_SUM = "CK0001"  # canarykit's own: weights of a split do not sum to 100
HEADER_TOKEN = "CK0002"  # canarykit's own: a header name Envoy would refuse, Istio lets through
MIXED_ROUTERS = "CK0003"  # canarykit's own: a workload routed by a VirtualService and an HTTPRoute
NO_TRAFFIC = "CK0004"  # canarykit's own: a Gateway API rule whose backend weights are all 0
UNREACHABLE_ROUTE_RULE = "CK0005"  # canarykit's own: a Gateway API rule repeating earlier matches
CLAIM_ROUTE = "CK0006"  # canarykit's own: a JWT-claim match Istio accepts that cannot match
EMPTY_SOURCE_LABEL = "CK0007"  # canarykit's own: a sourceLabels value left empty

# Gateway API (v1.6.1 standard channel): the versions served per kind, and per filter type the
# field that type needs (every other type's field must be absent).
ROUTE_API_VERSIONS = {
    "HTTPRoute": (f"{GATEWAY_GROUP}/v1", f"{GATEWAY_GROUP}/v1beta1"),
    "GRPCRoute": (f"{GATEWAY_GROUP}/v1",),
}
GRPC_FILTERS = {"RequestHeaderModifier": "requestHeaderModifier",
                "ResponseHeaderModifier": "responseHeaderModifier",
                "RequestMirror": "requestMirror", "ExtensionRef": "extensionRef"}
HTTP_FILTERS = {**GRPC_FILTERS, "RequestRedirect": "requestRedirect", "URLRewrite": "urlRewrite",
                "CORS": "cors"}
HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")
PATH_MATCH_TYPES = ("Exact", "PathPrefix", "RegularExpression")
_HOSTNAME = re.compile(r"(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")

GRPC_STATUSES = frozenset({
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
    "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
    "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
    "UNAUTHENTICATED",
})
SIMPLE_LB = ("UNSPECIFIED", "LEAST_CONN", "RANDOM", "PASSTHROUGH", "ROUND_ROBIN", "LEAST_REQUEST")
MAX_REGEX_LENGTH = 1024
# The protobuf types behind Istio's integer fields; the API server refuses a value beyond them.
INT32_MAX = 2**31 - 1
UINT32_MAX = 2**32 - 1
UINT64_MAX = 2**64 - 1
MAX_DURATION_SECONDS = (2**63 - 1) / 1e9  # Go's longest duration, what the CRDs' CEL parses
PSEUDO_HEADERS = frozenset({":method", ":scheme", ":authority", ":path", ":status"})
# Our own patterns use `re` (the re2 module's Python wrapper costs microseconds per call);
# user regexes are checked with RE2, as Envoy compiles them.
CLAIM_PREFIX = "@request.auth.claims"
_HEADER_VALUE = re.compile(r"[^\x00-\x08\x0a-\x1f\x7f]*")
SHOWN = 80  # characters of a value or a key a message may show
_CANONICAL = json.JSONEncoder(sort_keys=True, default=str)  # one encoder, made once
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_./:@-]{1,80}")
_MIRROR_FIELDS = frozenset({"mirror", "mirrors", "mirrorPercentage", "mirrorPercent"})
MAX_LISTED = 5  # objects one message names (IST0109): output grows with the input, not its square
_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False  # report through messages, not RE2's own stderr logging
_ABSENT = object()
host_fqdn = functools.lru_cache(maxsize=8192)(_host_fqdn)  # manifests repeat their hosts


@dataclass(frozen=True)
class Message:
    """One finding about one object, printed like `istioctl analyze` prints it."""

    level: str
    code: str
    kind: str
    namespace: str
    name: str
    message: str

    def format(self) -> str:
        where = f"{self.kind} {self.namespace}/{self.name}" if self.kind else self.name
        return f"{self.level} [{self.code}] ({where}) {self.message}"

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class _Finding:
    """A finding before it is tied to the object it is about."""

    level: str
    code: str
    text: str


def _shown(value: Any) -> str:
    """A value as a message shows it: its repr, cut, on one line."""
    text = repr(value)
    return text if len(text) <= SHOWN else text[:SHOWN] + "..."


def _key(name: Any) -> str:
    """A mapping key as part of a field path: plain when it is a plain name, else quoted, cut."""
    text = str(name)
    if _PLAIN_KEY.fullmatch(text):
        return text
    return json.dumps(text[:SHOWN] + ("..." if len(text) > SHOWN else ""))


def _bad(path: str, problem: str, value: Any = _ABSENT) -> _Finding:
    """An IST0106 schema error naming the field, and the value (cut) when there is one."""
    text = f"{path}: {problem}" if value is _ABSENT else f"{path}: {problem} (got {_shown(value)})"
    return _Finding(ERROR, SCHEMA_ERROR, text)


# --- typed access: report a wrong type once, then carry on with an empty value ---------------


def _as_dict(value: Any, path: str, out: list[_Finding]) -> dict:
    if type(value) is dict:
        return value
    if value is None:
        return {}
    if not isinstance(value, dict):
        out.append(_bad(path, "must be a mapping", value))
        return {}
    return value


def _as_list(value: Any, path: str, out: list[_Finding]) -> list:
    if type(value) is list:
        return value
    if value is None:
        return []
    if not isinstance(value, list):
        out.append(_bad(path, "must be a list", value))
        return []
    return value


def _as_str(value: Any, path: str, out: list[_Finding]) -> str | None:
    if type(value) is str:
        return value
    if value is None:
        return None
    if not isinstance(value, str):
        out.append(_bad(path, "must be a string", value))
        return None
    return value


def _check_int(
    value: Any, path: str, out: list[_Finding], low: int | None = None, high: int | None = None,
    *, limit: int = INT32_MAX,
) -> int | None:
    """Check an optional integer field against an inclusive range and the range of its
    protobuf type (`limit`: INT32_MAX, UINT32_MAX, UINT64_MAX); return it when usable."""
    if type(value) is int and (low is None or value >= low) \
            and (high is None or value <= high) and -INT32_MAX - 1 <= value <= limit:
        return value  # the common case, decided at once
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        out.append(_bad(path, "must be an integer", value))
        return None
    if value > limit or value < -INT32_MAX - 1:  # unsigned fields pass low=0
        kind = {INT32_MAX: "a 32-bit integer", UINT32_MAX: "an unsigned 32-bit integer"}.get(
            limit, "an unsigned 64-bit integer")
        out.append(_bad(path, f"is out of range for {kind}", value))
        return None
    if low is not None and high is not None and not low <= value <= high:
        out.append(_bad(path, f"must be between {low} and {high}", value))
    elif low is not None and value < low:
        out.append(_bad(path, f"must be >= {low}", value))
    elif high is not None and value > high:
        out.append(_bad(path, f"must be <= {high}", value))
    return value


def _check_percentage(value: Any, path: str, out: list[_Finding]) -> None:
    """An Istio `Percent` object: `{value: 0..100}`."""
    if value is None:
        return
    pct = _as_dict(value, path, out)
    number = pct.get("value")
    if number is None:
        return
    if isinstance(number, bool) or not isinstance(number, (int, float)):
        out.append(_bad(f"{path}.value", "must be a number", number))
    elif not 0 <= number <= 100:
        out.append(_bad(f"{path}.value", "must be between 0 and 100", number))
    elif 0 < number < 0.0001:  # Istio's rule: Envoy's finest share is a millionth
        out.append(_bad(f"{path}.value", "must be 0 or at least 0.0001", number))


def _check_duration(value: Any, path: str, out: list[_Finding], minimum: float = 0.001) -> None:
    """A Go duration of at least `minimum` seconds, to millisecond precision (Istio's rule)."""
    if value is None:
        return
    seconds = _duration_seconds(value) if isinstance(value, str) else None  # cache keys hash
    if seconds is None:
        out.append(_bad(path, "must be a duration such as 100ms, 1.5s or 1h30m", value))
        return
    if seconds > MAX_DURATION_SECONDS:
        out.append(_bad(path, "must be at most 2562047h47m16s (the longest Go duration)", value))
    elif seconds < minimum:
        need = "at least 1ms" if minimum == 0.001 else "not be negative"
        out.append(_bad(path, f"must be {need}", value))
    elif abs(seconds * 1000 - round(seconds * 1000)) > 1e-6:
        out.append(_bad(path, "must be a whole number of milliseconds", value))


@functools.lru_cache(maxsize=4096)
def _duration_seconds(value: Any) -> float | None:
    """Seconds of a Go duration, None when it is not one (cached: manifests repeat them)."""
    try:
        return parse_duration(value, "duration") if isinstance(value, str) else None
    except BadInput:
        return None


@functools.lru_cache(maxsize=4096)
def _regex_problem(pattern: str) -> str:
    """Why RE2 refuses a pattern, '' when it compiles (cached: manifests repeat them)."""
    try:
        re2.compile(pattern, options=_RE2_OPTIONS)
    except re2.error as err:
        reason = err.args[0] if err.args else err
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        return str(reason).splitlines()[0] if str(reason) else "refused"
    return ""


def _check_regex(value: Any, path: str, out: list[_Finding]) -> None:
    """Istio and Envoy use RE2, which refuses lookaround and backreferences."""
    pattern = _as_str(value, path, out)
    if pattern is None:
        return
    if pattern == "":
        out.append(_bad(path, "must not be empty"))
        return
    if len(pattern) > MAX_REGEX_LENGTH:
        out.append(_bad(path, f"must be at most {MAX_REGEX_LENGTH} characters", len(pattern)))
        return
    problem = _regex_problem(pattern)
    if problem:
        out.append(_bad(path, f"is not a valid RE2 regular expression: {_cut(problem)}", pattern))


def _cut(text: str) -> str:
    """A name or text as a message shows it: on one line (escapes visible), cut."""
    if len(text) <= SHOWN and text.isprintable():
        return text
    text = text[:SHOWN + 1]
    if not text.isprintable():
        text = json.dumps(text)[1:-1]
    return text if len(text) <= SHOWN else text[:SHOWN] + "..."


def _check_header_name(name: Any, path: str, out: list[_Finding]) -> None:
    """Istio's rule for a header a route matches on: a token, a pseudo-header or a JWT claim."""
    if not isinstance(name, str) or name == "":
        out.append(_bad(path, "header name cannot be empty" if name == "" else
                        "header name must be a string", name))
    elif name.startswith(CLAIM_PREFIX) and not CLAIM_HEADER.fullmatch(name):
        out.append(_bad(path, "JWT claim header must name a claim, no part empty: "
                        "@request.auth.claims.NAME, .a.b or [a][b]", name))
    elif not (is_header_name(name) or name in PSEUDO_HEADERS or CLAIM_HEADER.fullmatch(name)):
        out.append(_bad(path, "is not a valid header name (letters, digits and "
                        "!#$%&'*+-.^_`|~ only)", name))


def _check_header_operations(value: Any, path: str, out: list[_Finding]) -> None:
    """`headers: {request|response: {set, add, remove}}` as Istio validates it."""
    operations = _as_dict(value, path, out)
    for side in ("request", "response"):
        side_path = f"{path}.{side}"
        side_ops = _as_dict(operations.get(side), side_path, out)
        for verb in ("set", "add"):
            for name, header_value in _as_dict(side_ops.get(verb), f"{side_path}.{verb}",
                                               out).items():
                where = f"{side_path}.{verb}.{_key(name)}"
                _check_operation_name(name, where, out, authority=side == "request")
                text = _as_str(header_value, where, out)
                if text is not None:
                    _check_header_value(text, where, out)
        removed = _as_list(side_ops.get("remove"), f"{side_path}.remove", out)
        for k, name in enumerate(removed):
            _check_operation_name(name, f"{side_path}.remove[{k}]", out, authority=False)


def _check_operation_name(name: Any, path: str, out: list[_Finding], *, authority: bool) -> None:
    if not isinstance(name, str) or name == "":
        out.append(_bad(path, "header name cannot be empty" if name == "" else
                        "header name must be a string", name))
        return
    lowered = name.lower()
    if authority and lowered in (":authority", "host"):
        return  # a request may set its authority
    if lowered == "host":
        out.append(_bad(path, "cannot set the Host header", name))
    elif name.startswith(":"):
        out.append(_bad(path, "header name cannot have a ':' prefix", name))
    elif not is_header_name(name):
        out.append(_Finding(WARNING, HEADER_TOKEN, f"{path}: header name {_shown(name)} is not "
                            "an HTTP token; Istio accepts it but Envoy refuses the route"))


def _check_header_value(text: str, path: str, out: list[_Finding]) -> None:
    """No control characters; `%` starts an Envoy variable (`%HOSTNAME%`) or is written `%%`."""
    if _HEADER_VALUE.fullmatch(text) is None:
        out.append(_bad(path, "header value must not hold control characters or line breaks",
                        text))
        return
    pos = 0
    while True:
        start = text.find("%", pos)
        if start < 0:
            return
        if text.startswith("%%", start):
            pos = start + 2
            continue
        end = text.find("%", start + 1)
        if end < 0 or end == start + 1:
            out.append(_bad(path, "header value has a '%' that starts no %VARIABLE% "
                            "(write %% for a percent sign)", text))
            return
        pos = end + 1


def _check_subset_name(value: Any, path: str, out: list[_Finding]) -> str | None:
    name = _as_str(value, path, out)
    if name is not None and not is_dns1123_label(name):
        out.append(_bad(path, "must be a DNS-1123 label (a-z, 0-9 and '-', at most 63)", name))
        return None
    return name


# --- VirtualService ------------------------------------------------------------------------


def _check_virtual_service(spec: dict, out: list[_Finding]) -> None:
    hosts = _as_list(spec.get("hosts"), "spec.hosts", out)
    gateways = _as_list(spec.get("gateways"), "spec.gateways", out)
    bound_to_mesh = not gateways or "mesh" in gateways
    if not hosts:
        out.append(_bad("spec.hosts", "must list at least one host"))
    for i, host in enumerate(hosts):
        host = _as_str(host, f"spec.hosts[{i}]", out)
        if host == "":
            out.append(_bad(f"spec.hosts[{i}]", "must not be empty"))
        elif host == "*" and bound_to_mesh:
            out.append(_bad(f"spec.hosts[{i}]", "wildcard host * is not allowed for a "
                            "VirtualService bound to the mesh (no gateways, or gateway mesh)",
                            host))
    http = _as_list(spec.get("http"), "spec.http", out)
    tcp = _as_list(spec.get("tcp"), "spec.tcp", out)
    tls = _as_list(spec.get("tls"), "spec.tls", out)
    if not (http or tcp or tls):
        out.append(_bad("spec", "must have http, tcp or tls routes"))
    for i, rule in enumerate(http):
        _check_http_rule(rule, f"spec.http[{i}]", out)
    for protocol, rules in (("tcp", tcp), ("tls", tls)):
        for i, rule in enumerate(rules):
            path = f"spec.{protocol}[{i}]"
            rule = _as_dict(rule, path, out)
            _check_route_destinations(rule.get("route"), f"{path}.route", out)
    _check_claim_routes(http, gateways, out)
    own_hosts = frozenset(host for host in hosts if isinstance(host, str))
    for rules in (http, tcp, tls):
        out.extend(_unreachable_rules(rules, own_hosts))


def _check_http_rule(rule: Any, path: str, out: list[_Finding]) -> None:
    if rule is None or rule == {}:
        out.append(_bad(path, "must not be empty"))
    rule = _as_dict(rule, path, out)
    if not rule:
        return
    routes = _as_list(rule.get("route"), f"{path}.route", out)
    other_actions = [key for key in ("redirect", "directResponse", "delegate") if key in rule]
    if not routes and not other_actions:
        out.append(_bad(path, "must have a route, redirect, directResponse or delegate"))
    if routes and other_actions:
        out.append(_bad(path, f"route cannot be combined with {other_actions[0]}"))
    # Each part is checked only when present: a path is built only for what is there.
    if "match" in rule:
        _check_matches(rule["match"], f"{path}.match", out)
    _check_route_destinations(routes, f"{path}.route", out)
    if "headers" in rule:
        _check_header_operations(rule["headers"], f"{path}.headers", out)
    if not _MIRROR_FIELDS.isdisjoint(rule):
        _check_mirrors(rule, path, out)
    if "fault" in rule:
        _check_fault(rule["fault"], f"{path}.fault", out)
    if "retries" in rule:
        _check_retries(rule["retries"], f"{path}.retries", out)
    if "timeout" in rule:  # Istio's webhook and CRD refuse a timeout under 1ms, `0s` included
        _check_duration(rule["timeout"], f"{path}.timeout", out)
    if "corsPolicy" in rule:
        cors = _as_dict(rule["corsPolicy"], f"{path}.corsPolicy", out)
        for k, origin in enumerate(_as_list(cors.get("allowOrigins"),
                                            f"{path}.corsPolicy.allowOrigins", out)):
            _check_string_match(origin, f"{path}.corsPolicy.allowOrigins[{k}]", out)
    if "redirect" in rule:
        redirect = _as_dict(rule["redirect"], f"{path}.redirect", out)
        for field in ("port", "redirectCode"):
            _check_int(redirect.get(field), f"{path}.redirect.{field}", out, 0, limit=UINT32_MAX)
    if "directResponse" in rule:
        direct = _as_dict(rule["directResponse"], f"{path}.directResponse", out)
        _check_int(direct.get("status"), f"{path}.directResponse.status", out, 0,
                   limit=UINT32_MAX)
    if "rewrite" in rule:
        rewrite = _as_dict(rule["rewrite"], f"{path}.rewrite", out)
        if "uriRegexRewrite" in rewrite:
            regex_rewrite = _as_dict(rewrite["uriRegexRewrite"],
                                     f"{path}.rewrite.uriRegexRewrite", out)
            _check_regex(regex_rewrite.get("match"), f"{path}.rewrite.uriRegexRewrite.match",
                         out)


def _check_matches(matches: Any, path: str, out: list[_Finding]) -> None:
    for k, match in enumerate(_as_list(matches, path, out)):
        match_path = f"{path}[{k}]"
        match = _as_dict(match, match_path, out)
        for field in ("uri", "scheme", "method", "authority"):
            if field in match:
                _check_string_match(match[field], f"{match_path}.{field}", out,
                                    allow_empty_prefix=field == "uri")
        for field in ("headers", "queryParams", "withoutHeaders"):
            if field not in match:
                continue
            for name, string_match in _as_dict(match[field], f"{match_path}.{field}",
                                               out).items():
                where = f"{match_path}.{field}.{_key(name)}"
                if field != "queryParams":
                    _check_header_name(name, where, out)
                if field == "headers" and string_match is None:
                    out.append(_bad(where, "header match cannot be null"))
                if field == "withoutHeaders" and isinstance(string_match, dict) \
                        and string_match.get("regex") == "*":
                    continue  # `*` here means "header present", not a regex
                _check_string_match(string_match, where, out)
        if "port" in match:
            _check_int(match["port"], f"{match_path}.port", out, 1, 65535, limit=UINT32_MAX)
        if "sourceLabels" in match:
            _check_source_labels(match["sourceLabels"], f"{match_path}.sourceLabels", out)


def _check_source_labels(value: Any, path: str, out: list[_Finding]) -> None:
    """Matched against the client workload's labels: a key or value no Kubernetes label can
    hold never matches (Istio's webhook refuses the same, save values over 63 characters)."""
    for key, label in _as_dict(value, path, out).items():
        where = f"{path}.{_key(key)}"
        if not is_label_key(key):
            out.append(_bad(where, "is not a Kubernetes label key (letters, digits, '-', '_' "
                            "and '.', at most 63, optionally after a DNS prefix and '/')", key))
        if label is None:
            out.append(_bad(where, "label value must be a string", label))
        text = _as_str(label, where, out)
        if text == "":
            out.append(_Finding(WARNING, EMPTY_SOURCE_LABEL, f"{where}: empty label value: the "
                                f"rule applies only to clients whose label {_cut(str(key))} is "
                                "set to the empty string; Istio accepts it, but it is usually a "
                                "value left out"))
        elif text is not None and not is_label_value(text):
            out.append(_bad(where, "is not a Kubernetes label value (letters, digits, '-', '_' "
                            "and '.', starting and ending with a letter or digit, at most 63)",
                            text))


def _check_string_match(value: Any, path: str, out: list[_Finding],
                        allow_empty_prefix: bool = False) -> None:
    """An Istio StringMatch: at most one of exact, prefix or regex, and nothing else (the API
    server drops a misspelt key, leaving a match on mere presence)."""
    string_match = _as_dict(value, path, out)
    kinds = [kind for kind in STRING_MATCH_KINDS if kind in string_match]
    if len(string_match) > len(kinds):
        for key in string_match:
            if key not in STRING_MATCH_KINDS:
                out.append(_bad(f"{path}.{_key(key)}", "is not a field of a string match "
                                "(exact, prefix or regex)", key))
    if len(kinds) > 1:
        out.append(_bad(path, "must set only one of exact, prefix or regex", sorted(kinds)))
    for kind in kinds:
        text = _as_str(string_match[kind], f"{path}.{kind}", out)
        if kind == "prefix" and text == "" and not allow_empty_prefix:
            out.append(_bad(f"{path}.prefix", "must not be empty"))
        if kind == "regex":
            _check_regex(string_match[kind], f"{path}.regex", out)


def _check_destination(value: Any, path: str, out: list[_Finding]) -> None:
    if value is None:
        out.append(_bad(path, "is required"))
        return
    destination = _as_dict(value, path, out)
    host = _as_str(destination.get("host"), f"{path}.host", out)
    if isinstance(value, dict) and destination.get("host") in (None, ""):
        out.append(_bad(f"{path}.host", "is required"))
    elif host == "*":
        out.append(_bad(f"{path}.host", "must name a service, not *", host))
    if "subset" in destination:
        _check_subset_name(destination["subset"], f"{path}.subset", out)
    if "port" in destination:
        port = _as_dict(destination["port"], f"{path}.port", out)
        _check_int(port.get("number"), f"{path}.port.number", out, 1, 65535, limit=UINT32_MAX)


def _check_route_destinations(value: Any, path: str, out: list[_Finding]) -> None:
    """Destinations of one route and their weights (Istio >= 1.15 needs no sum of 100)."""
    routes = _as_list(value, path, out)
    total = 0
    for j, route in enumerate(routes):
        route_path = f"{path}[{j}]"
        route = _as_dict(route, route_path, out)
        _check_destination(route.get("destination"), f"{route_path}.destination", out)
        weight = _check_int(route["weight"], f"{route_path}.weight", out, 0) \
            if "weight" in route else None
        if "headers" in route:
            _check_header_operations(route["headers"], f"{route_path}.headers", out)
        total += weight if weight is not None and weight > 0 else 0
    if total > INT32_MAX:  # Istio adds the weights as a 32-bit integer
        out.append(_bad(path, "weights add up beyond a 32-bit integer", total))
    elif len(routes) > 1 and total == 0:
        out.append(_bad(path, "total weight of several destinations must not be 0", total))
    elif len(routes) > 1 and total != 100:
        out.append(_Finding(WARNING, WEIGHT_SUM,
                            f"{path}: destination weights sum to {total}, not 100; Istio >= 1.15 "
                            "accepts this and splits in proportion, but it is usually a mistake"))


def _check_mirrors(rule: dict, path: str, out: list[_Finding]) -> None:
    mirrors = _as_list(rule.get("mirrors"), f"{path}.mirrors", out)
    if "mirror" in rule and mirrors:
        out.append(_bad(path, "mirror and mirrors cannot both be set"))
    if "mirror" in rule:
        _check_destination(rule["mirror"], f"{path}.mirror", out)
    _check_percentage(rule.get("mirrorPercentage"), f"{path}.mirrorPercentage", out)
    _check_int(rule.get("mirrorPercent"), f"{path}.mirrorPercent", out, 0, 100,
               limit=UINT32_MAX)
    for k, mirror in enumerate(mirrors):
        mirror = _as_dict(mirror, f"{path}.mirrors[{k}]", out)
        _check_destination(mirror.get("destination"), f"{path}.mirrors[{k}].destination", out)
        _check_percentage(mirror.get("percentage"), f"{path}.mirrors[{k}].percentage", out)


def _check_fault(value: Any, path: str, out: list[_Finding]) -> None:
    if value is None:
        return
    fault = _as_dict(value, path, out)
    if fault.get("abort") is None and fault.get("delay") is None:
        out.append(_bad(path, "must have an abort and/or a delay"))
    if fault.get("abort") is not None:
        abort = _as_dict(fault["abort"], f"{path}.abort", out)
        _check_percentage(abort.get("percentage"), f"{path}.abort.percentage", out)
        kinds = [kind for kind in ("httpStatus", "grpcStatus", "http2Error") if kind in abort]
        if not kinds:
            out.append(_bad(f"{path}.abort", "must set httpStatus, grpcStatus or http2Error"))
        elif len(kinds) > 1:
            out.append(_bad(f"{path}.abort", "must set only one of httpStatus, grpcStatus or "
                            "http2Error", kinds))
        _check_int(abort.get("httpStatus"), f"{path}.abort.httpStatus", out, 200, 599)
        grpc_status = _as_str(abort.get("grpcStatus"), f"{path}.abort.grpcStatus", out)
        if grpc_status is not None and grpc_status not in GRPC_STATUSES:
            out.append(_bad(f"{path}.abort.grpcStatus", "must be a gRPC status name such as "
                            "UNAVAILABLE", grpc_status))
    if fault.get("delay") is not None:
        delay = _as_dict(fault["delay"], f"{path}.delay", out)
        _check_percentage(delay.get("percentage"), f"{path}.delay.percentage", out)
        _check_int(delay.get("percent"), f"{path}.delay.percent", out, 0, 100)
        _check_duration(delay.get("fixedDelay"), f"{path}.delay.fixedDelay", out)
        if "exponentialDelay" in delay:
            out.append(_bad(f"{path}.delay.exponentialDelay", "is not supported by Istio yet"))


def _check_retries(value: Any, path: str, out: list[_Finding]) -> None:
    if value is None:
        return
    retries = _as_dict(value, path, out)
    attempts = _check_int(retries.get("attempts", 0), f"{path}.attempts", out, 0)
    policy = [key for key in ("perTryTimeout", "retryOn", "retryRemoteLocalities")
              if key in retries]
    if attempts == 0 and policy:
        out.append(_bad(f"{path}.attempts", f"must be > 0 when {', '.join(policy)} is set "
                        "(0 or absent disables retries)", attempts))
    _check_duration(retries.get("perTryTimeout"), f"{path}.perTryTimeout", out)
    _check_duration(retries.get("backoff"), f"{path}.backoff", out)
    retry_on = _as_str(retries.get("retryOn"), f"{path}.retryOn", out)
    for condition in (retry_on.split(",") if retry_on is not None else []):
        if condition not in RETRY_ON_POLICIES and not _is_http_status(condition):
            out.append(_bad(f"{path}.retryOn", f"{condition!r} is not an Envoy retry condition "
                            "or HTTP status code", retry_on))


def _is_http_status(text: str) -> bool:
    return text.isdigit() and 100 <= int(text) <= 599


# --- JWT-claim routing: only a gateway sees the claims ---------------------------------------


def _check_claim_routes(http: list, gateways: list, out: list[_Finding]) -> None:
    """Istio's webhook refuses `@request.auth.claims.*` matches on a VirtualService bound to the
    mesh only: sidecars never see the claims. Bound to the mesh and a gateway it accepts them,
    but they match at the gateway only."""
    at_gateways = [gateway for gateway in gateways if gateway != "mesh"]
    at_mesh = not gateways or "mesh" in gateways
    for where, n, match, string_match in _claim_matches(http):
        label = _rule_label(http, n)
        if not at_gateways:
            out.append(_bad(where, "JWT claim routing works only on a gateway: sidecars never "
                            f"see the claims, so rule {label} never matches; bind the "
                            "VirtualService to a gateway (spec.gateways)"))
        elif at_mesh and not _gateway_only(match):
            out.append(_Finding(WARNING, CLAIM_ROUTE, f"{where}: rule {label} matches a JWT "
                                "claim, which works only at gateway "
                                f"{_listed(at_gateways, _said)}: in the mesh sidecars never see "
                                "the claims, so there the match never applies"))
        if isinstance(string_match, dict) \
                and not any(kind in string_match for kind in STRING_MATCH_KINDS):
            out.append(_Finding(ERROR, CLAIM_ROUTE, f"{where}: JWT claim match must set exact, "
                                "prefix or regex: Istio matches a claim by its value, never by "
                                f"presence alone (got {_shown(string_match)})"))


def _claim_matches(http: list) -> Iterator[tuple[str, int, dict, Any]]:
    """(path, rule index, match, string match) of each well-formed claim header match."""
    for n, rule in enumerate(http):
        matches = rule.get("match") if isinstance(rule, dict) else None
        for k, match in enumerate(matches if isinstance(matches, list) else []):
            for field in ("headers", "withoutHeaders"):
                headers = match.get(field) if isinstance(match, dict) else None
                for name, string_match in (headers.items() if isinstance(headers, dict) else ()):
                    if isinstance(name, str) and CLAIM_HEADER.fullmatch(name):
                        yield f"spec.http[{n}].match[{k}].{field}.{_key(name)}", n, match, \
                            string_match


def _gateway_only(match: dict) -> bool:
    """Whether a match names its own gateways, none of them the mesh."""
    gateways = match.get("gateways")
    return isinstance(gateways, list) and bool(gateways) and "mesh" not in gateways


# --- IST0130 / IST0131: rules and matches that can never be used ---------------------------


def _unreachable_rules(rules: list, own_hosts: frozenset[str] = frozenset()) -> list[_Finding]:
    """Istio's check: rules after a catch-all, and matches repeating an earlier match. A rule's
    message says what it would have done, so the user sees what the rule order costs."""
    out: list[_Finding] = []
    seen: dict[str, int] = {}  # canonical match -> index of the first rule holding it
    # (index of the first catch-all rule, index of its match-all match or None for no match)
    catch_all: tuple[int, int | None] | None = None
    for n, rule in enumerate(rules):
        if not isinstance(rule, dict) or not isinstance(rule.get("match") or [], list):
            continue
        matches = rule.get("match") or []
        if catch_all is not None:
            out.append(_shadowed(rules, n, catch_all, own_hosts))
            continue
        if not matches:
            catch_all = (n, None)
            continue
        duplicates = 0
        for k, match in enumerate(matches):
            key = _match_key(match)
            if key in seen:
                duplicates += 1
                label, match_label = _rule_label(rules, n), _match_label(match, k)
                out.append(_Finding(INFO, INEFFECTIVE_MATCH,
                                    f"VirtualService rule {label} match {match_label} is not used "
                                    f"(duplicate/overlapping match in rule "
                                    f"{_rule_label(rules, seen[key])})."))
            else:
                seen[key] = n
        everything = next((k for k, match in enumerate(matches) if _matches_everything(match)),
                          None)
        if duplicates == len(matches):
            out.append(_unused(rule, _rule_label(rules, n), "each of its matches repeats a match "
                               "of an earlier rule", "", own_hosts))
        elif everything is not None:
            catch_all = (n, everything)
    return out


def _shadowed(rules: list, n: int, catch_all: tuple[int, int | None],
              own_hosts: frozenset[str]) -> _Finding:
    """IST0130 for a rule behind a catch-all: name the catch-all, and the fix."""
    first, everything = catch_all
    ref, first_label = _rule_ref(rules, first), _rule_label(rules, first)
    if everything is None:
        reason = f"rule {ref} before it has no match and takes every request"
    else:
        match_label = _match_label(rules[first]["match"][everything], everything)
        reason = f"rule {ref} before it has match {match_label}, which takes every request"
    if rules[n].get("match"):
        advice = f"move {first_label} last"
    elif everything is None:
        advice = "only the last rule can have no matches"
    else:
        advice = "only the last rule can take every request"
    return _unused(rules[n], _rule_label(rules, n), reason, advice, own_hosts)


def _unused(rule: dict, label: str, reason: str, advice: str,
            own_hosts: frozenset[str]) -> _Finding:
    """IST0130 saying what the unused rule would have done: what the user loses."""
    effects = _rule_effects(rule, own_hosts)
    verb = "applies" if len(effects) == 1 else "apply"
    lost = f"{_and_list(effects)} never {verb}" if effects else "it never applies"
    tail = f"; {advice}." if advice else "."
    return _Finding(WARNING, UNREACHABLE_RULE,
                    f"VirtualService rule {label} not used: {reason}, so {lost}{tail}")


def _rule_effects(rule: dict, own_hosts: frozenset[str]) -> list[str]:
    """What a rule does, in words: its destinations, its action and each policy it sets."""
    effects = []
    if rule.get("route"):
        effects.append(f"its route to {_destinations_text(rule['route'], own_hosts)}")
    if "redirect" in rule:
        effects.append(_redirect_text(rule["redirect"]))
    if "directResponse" in rule:
        effects.append("its direct response" + _field_text(rule["directResponse"], "status"))
    if "delegate" in rule:
        effects.append("its delegation to" + _field_text(rule["delegate"], "name"))
    if "rewrite" in rule:
        effects.append(_rewrite_text(rule["rewrite"]))
    if "retries" in rule:
        effects.append(_retries_text(rule["retries"]))
    if "timeout" in rule:
        effects.append(f"its timeout {_said(rule['timeout'])}")
    if "fault" in rule:
        effects.append(_fault_text(rule["fault"]))
    if "mirror" in rule or "mirrors" in rule:
        effects.append(_mirror_text(rule, own_hosts))
    if "headers" in rule:
        effects.append(_headers_text(rule["headers"]))
    if "corsPolicy" in rule:
        effects.append("its CORS policy")
    return effects


def _said(value: Any) -> str:
    """A value as a message's words show it: a string as it is, anything else as Python
    writes it; on one line, cut."""
    return _cut(value if isinstance(value, str) else repr(value))


def _field_text(value: Any, field: str) -> str:
    """` VALUE` of one field of a mapping, '' when it is not there."""
    return f" {_said(value[field])}" if isinstance(value, dict) and field in value else ""


def _and_list(items: list[str]) -> str:
    """`a`, `a and b`, `a, b and c`: a list as a sentence says it."""
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def _listed(items: list, describe: Callable[[Any], str]) -> str:
    """The first few items described, and how many more: a message stays short."""
    shown = [describe(item) for item in items[:MAX_LISTED]]
    if len(items) > MAX_LISTED:
        shown.append(f"{len(items) - MAX_LISTED} more")
    return _and_list(shown)


def _destination_text(destination: Any, own_hosts: frozenset[str]) -> str:
    """`subset v2` of the service the VirtualService routes; another host by its name."""
    if not isinstance(destination, dict):
        return _said(destination)
    host, subset, port = destination.get("host"), destination.get("subset"), \
        destination.get("port")
    number = port.get("number") if isinstance(port, dict) else None
    if subset is not None and number is None and isinstance(host, str) and host in own_hosts:
        return f"subset {_said(subset)}"
    text = _said(host) + (f":{_said(number)}" if number is not None else "")
    return text + (f" subset {_said(subset)}" if subset is not None else "")


def _destinations_text(routes: Any, own_hosts: frozenset[str]) -> str:
    """Destinations with their weights when there are several."""
    if not isinstance(routes, list):
        return _said(routes)

    def describe(route: Any) -> str:
        if not isinstance(route, dict):
            return _said(route)
        text = _destination_text(route.get("destination"), own_hosts)
        return text + (f" (weight {_said(route['weight'])})"
                       if len(routes) > 1 and "weight" in route else "")

    return _listed(routes, describe)


def _share(percentage: Any) -> str:
    """` for 10%` from an Istio Percent, '' when it gives none."""
    value = percentage.get("value") if isinstance(percentage, dict) else None
    return f" for {_said(value)}%" if value is not None else ""


def _redirect_text(redirect: Any) -> str:
    """`its redirect to new.example/v2 (301)`."""
    if not isinstance(redirect, dict):
        return "its redirect"
    target = "".join(_said(redirect[key]) for key in ("authority", "uri") if key in redirect)
    code = f" ({_said(redirect['redirectCode'])})" if "redirectCode" in redirect else ""
    return f"its redirect to {target}{code}" if target else f"its redirect{code}"


def _rewrite_text(rewrite: Any) -> str:
    """`its rewrite (uri to /v2, authority to new.example)`."""
    parts = [f"{key} to {_said(rewrite[key])}" for key in ("uri", "authority")
             if isinstance(rewrite, dict) and key in rewrite]
    if isinstance(rewrite, dict) and "uriRegexRewrite" in rewrite:
        parts.append("uri by regex")
    return f"its rewrite ({', '.join(parts)})" if parts else "its rewrite"


def _retries_text(retries: Any) -> str:
    """`its retries (3 x 1s on 5xx)`: attempts x per-try timeout on the retry conditions."""
    if not isinstance(retries, dict):
        return "its retries"
    if not retries.get("attempts"):
        return "its retries (none)"
    text = _said(retries["attempts"])
    if "perTryTimeout" in retries:
        text += f" x {_said(retries['perTryTimeout'])}"
    if "retryOn" in retries:
        text += f" on {_said(retries['retryOn'])}"
    return f"its retries ({text})"


def _fault_text(fault: Any) -> str:
    """`its fault injection (abort 503 for 10%, delay 5s)`."""
    parts = []
    abort = fault.get("abort") if isinstance(fault, dict) else None
    delay = fault.get("delay") if isinstance(fault, dict) else None
    if isinstance(abort, dict):
        status = next((abort[kind] for kind in ("httpStatus", "grpcStatus", "http2Error")
                       if kind in abort), None)
        parts.append("abort" + (f" {_said(status)}" if status is not None else "")
                     + _share(abort.get("percentage")))
    if isinstance(delay, dict):
        parts.append("delay" + _field_text(delay, "fixedDelay") + _share(delay.get("percentage")))
    return f"its fault injection ({', '.join(parts)})" if parts else "its fault injection"


def _mirror_text(rule: dict, own_hosts: frozenset[str]) -> str:
    """`its mirror to subset v2 for 10%`, or its several mirrors."""
    if "mirror" in rule:
        share = _share(rule.get("mirrorPercentage"))
        if not share and rule.get("mirrorPercent") is not None:
            share = f" for {_said(rule['mirrorPercent'])}%"
        return f"its mirror to {_destination_text(rule['mirror'], own_hosts)}{share}"
    mirrors = rule["mirrors"]
    if not isinstance(mirrors, list) or not mirrors:
        return "its mirrors"

    def describe(mirror: Any) -> str:
        if not isinstance(mirror, dict):
            return _said(mirror)
        return _destination_text(mirror.get("destination"), own_hosts) \
            + _share(mirror.get("percentage"))

    return f"its mirrors to {_listed(mirrors, describe)}"


def _headers_text(headers: Any) -> str:
    """`its header changes (x-version and x-debug)`: the headers it sets, adds or removes."""
    names: list = []
    for side in ("request", "response"):
        operations = headers.get(side) if isinstance(headers, dict) else None
        for verb in ("set", "add", "remove"):
            value = operations.get(verb) if isinstance(operations, dict) else None
            if isinstance(value, (dict, list)):
                names.extend(value)
    return f"its header changes ({_listed(names, _said)})" if names else "its header changes"


def _rule_ref(rules: list, n: int) -> str:
    """A rule by its name and its place (`"default" (#0)`), or by its place alone."""
    label = _rule_label(rules, n)
    return label if label == f"#{n}" else f"{label} (#{n})"


def _rule_label(rules: list, n: int) -> str:
    name = rules[n].get("name") if isinstance(rules[n], dict) else None
    return json.dumps(_cut(name)) if isinstance(name, str) and name else f"#{n}"


def _match_label(match: Any, k: int) -> str:
    name = match.get("name") if isinstance(match, dict) else None
    return json.dumps(_cut(name)) if isinstance(name, str) and name else f"#{k}"


def _match_key(match: Any) -> str:
    """A match as canonical JSON without its name: equal keys select the same requests."""
    if isinstance(match, dict) and "name" in match:
        match = {key: value for key, value in match.items() if key != "name"}
    return _CANONICAL.encode(match)


def _matches_everything(match: Any) -> bool:
    if not isinstance(match, dict):
        return False
    conditions = {key: value for key, value in match.items()
                  if key not in ("name", "ignoreUriCase")}
    return conditions in ({}, {"uri": {"prefix": "/"}}, {"uri": {"regex": ".*"}})


# --- DestinationRule -----------------------------------------------------------------------


def _check_destination_rule(spec: dict, out: list[_Finding]) -> None:
    _as_str(spec.get("host"), "spec.host", out)
    if spec.get("host") in (None, ""):
        out.append(_bad("spec.host", "is required"))
    if "trafficPolicy" in spec:
        _check_traffic_policy(spec["trafficPolicy"], "spec.trafficPolicy", out)
    first_index: dict[str, int] = {}
    for i, subset in enumerate(_as_list(spec.get("subsets"), "spec.subsets", out)):
        path = f"spec.subsets[{i}]"
        subset = _as_dict(subset, path, out)
        if subset.get("name") is None:
            out.append(_bad(f"{path}.name", "is required"))
        name = _check_subset_name(subset.get("name"), f"{path}.name", out)
        if name is not None and name in first_index:
            out.append(_bad(f"{path}.name", f"duplicates spec.subsets[{first_index[name]}].name",
                            name))
        elif name is not None:
            first_index[name] = i
        for key, value in _as_dict(subset.get("labels"), f"{path}.labels", out).items():
            _as_str(value, f"{path}.labels.{_key(key)}", out)
        if "trafficPolicy" in subset:
            _check_traffic_policy(subset["trafficPolicy"], f"{path}.trafficPolicy", out)


def _check_traffic_policy(value: Any, path: str, out: list[_Finding]) -> None:
    policy = _as_dict(value, path, out)
    if value == {}:
        out.append(_bad(path, "must set at least one field"))
    _check_policy_parts(policy, path, out)
    if "retryBudget" in policy:
        retry_budget = _as_dict(policy["retryBudget"], f"{path}.retryBudget", out)
        _check_int(retry_budget.get("minRetryConcurrency"),
                   f"{path}.retryBudget.minRetryConcurrency", out, 0, limit=UINT32_MAX)
        _check_percentage(retry_budget.get("percent"), f"{path}.retryBudget.percent", out)
    if "portLevelSettings" not in policy:
        return
    for k, port_policy in enumerate(_as_list(policy["portLevelSettings"],
                                             f"{path}.portLevelSettings", out)):
        port_path = f"{path}.portLevelSettings[{k}]"
        port_policy = _as_dict(port_policy, port_path, out)
        port = _as_dict(port_policy.get("port"), f"{port_path}.port", out)
        _check_int(port.get("number"), f"{port_path}.port.number", out, 1, 65535,
                   limit=UINT32_MAX)
        _check_policy_parts(port_policy, port_path, out)


def _check_policy_parts(policy: dict, path: str, out: list[_Finding]) -> None:
    """The parts a traffic policy shares with its port-level settings."""
    if "loadBalancer" in policy:
        _check_load_balancer(policy["loadBalancer"], f"{path}.loadBalancer", out)
    if "outlierDetection" in policy:
        _check_outlier_detection(policy["outlierDetection"], f"{path}.outlierDetection", out)
    if "connectionPool" in policy:
        _check_connection_pool(policy["connectionPool"], f"{path}.connectionPool", out)


def _check_load_balancer(value: Any, path: str, out: list[_Finding]) -> None:
    balancer = _as_dict(value, path, out)
    if "simple" in balancer and "consistentHash" in balancer:
        out.append(_bad(path, "must set only one of simple or consistentHash"))
    simple = _as_str(balancer.get("simple"), f"{path}.simple", out)
    if simple is not None and simple not in SIMPLE_LB:
        out.append(_bad(f"{path}.simple", f"must be one of {', '.join(SIMPLE_LB)}", simple))
    consistent_hash = _as_dict(balancer.get("consistentHash"), f"{path}.consistentHash", out) \
        if "consistentHash" in balancer else {}
    if "minimumRingSize" in consistent_hash:
        _check_int(consistent_hash["minimumRingSize"], f"{path}.consistentHash.minimumRingSize",
                   out, 0, limit=UINT64_MAX)
    for part, field in (("ringHash", "minimumRingSize"), ("maglev", "tableSize")):
        if part in consistent_hash:
            part_value = _as_dict(consistent_hash[part], f"{path}.consistentHash.{part}", out)
            _check_int(part_value.get(field), f"{path}.consistentHash.{part}.{field}", out, 0,
                       limit=UINT64_MAX)
    keys = [key for key in HASH_KEYS if key in consistent_hash]
    if len(keys) > 1:
        out.append(_bad(f"{path}.consistentHash", f"must set only one of {', '.join(HASH_KEYS)}",
                        keys))
    if "httpCookie" in consistent_hash:
        cookie_path = f"{path}.consistentHash.httpCookie"
        cookie = _as_dict(consistent_hash["httpCookie"], cookie_path, out)
        if not cookie.get("name"):
            out.append(_bad(f"{cookie_path}.name", "is required"))
        # A ttl of 0s is allowed: it asks for a session cookie.
        _check_duration(cookie.get("ttl"), f"{cookie_path}.ttl", out, minimum=0.0)
    if "warmupDurationSecs" in balancer:
        _check_duration(balancer["warmupDurationSecs"], f"{path}.warmupDurationSecs", out)
    if "warmup" in balancer:
        warmup = _as_dict(balancer["warmup"], f"{path}.warmup", out)
        _check_duration(warmup.get("duration"), f"{path}.warmup.duration", out)


def _check_outlier_detection(value: Any, path: str, out: list[_Finding]) -> None:
    detection = _as_dict(value, path, out)
    for field, value in detection.items():
        if field in ("consecutive5xxErrors", "consecutiveGatewayErrors",
                     "consecutiveLocalOriginFailures"):
            _check_int(value, f"{path}.{field}", out, 0, limit=UINT32_MAX)
        elif field == "consecutiveErrors":
            _check_int(value, f"{path}.{field}", out, 0)
        elif field in ("interval", "baseEjectionTime"):
            _check_duration(value, f"{path}.{field}", out)
        elif field in ("maxEjectionPercent", "minHealthPercent"):
            _check_int(value, f"{path}.{field}", out, 0, 100)


def _check_connection_pool(value: Any, path: str, out: list[_Finding]) -> None:
    pool = _as_dict(value, path, out)
    tcp = _as_dict(pool["tcp"], f"{path}.tcp", out) if "tcp" in pool else {}
    for field, value in tcp.items():
        if field == "maxConnections":
            _check_int(value, f"{path}.tcp.{field}", out, 0)
        elif field in ("connectTimeout", "maxConnectionDuration"):
            _check_duration(value, f"{path}.tcp.{field}", out)
        elif field == "idleTimeout":  # Istio lets a tcp idleTimeout of 0s switch it off
            _check_duration(value, f"{path}.tcp.{field}", out, minimum=0.0)
        elif field == "tcpKeepalive":
            keepalive = _as_dict(value, f"{path}.tcp.tcpKeepalive", out)
            for part in ("time", "interval"):
                _check_duration(keepalive.get(part), f"{path}.tcp.tcpKeepalive.{part}", out)
            _check_int(keepalive.get("probes"), f"{path}.tcp.tcpKeepalive.probes", out, 0,
                       limit=UINT32_MAX)
    http = _as_dict(pool["http"], f"{path}.http", out) if "http" in pool else {}
    for field, value in http.items():
        if field in ("http1MaxPendingRequests", "http2MaxRequests", "maxRequestsPerConnection",
                     "maxRetries", "maxConcurrentStreams"):
            _check_int(value, f"{path}.http.{field}", out, 0)
        elif field == "idleTimeout":
            _check_duration(value, f"{path}.http.{field}", out)
        elif field == "http2KeepAlive":
            keepalive = _as_dict(value, f"{path}.http.http2KeepAlive", out)
            for part in ("interval", "timeout"):
                _check_duration(keepalive.get(part), f"{path}.http.http2KeepAlive.{part}", out)


# --- Gateway API: HTTPRoute and GRPCRoute ----------------------------------------------------


def _max_items(items: list, limit: int, path: str, out: list[_Finding]) -> None:
    if len(items) > limit:
        out.append(_bad(path, f"must have at most {limit} items", len(items)))


def _check_route(spec: dict, out: list[_Finding], *, grpc: bool) -> None:
    """What the CRD's schema and CEL rules refuse, plus rules that serve or match nothing."""
    parents = _as_list(spec.get("parentRefs"), "spec.parentRefs", out)
    _max_items(parents, 32, "spec.parentRefs", out)
    for i, parent in enumerate(parents):
        parent = _as_dict(parent, f"spec.parentRefs[{i}]", out)
        if not parent.get("name"):
            out.append(_bad(f"spec.parentRefs[{i}].name", "is required"))
    hostnames = _as_list(spec.get("hostnames"), "spec.hostnames", out)
    _max_items(hostnames, 16, "spec.hostnames", out)
    for i, hostname in enumerate(hostnames):
        hostname = _as_str(hostname, f"spec.hostnames[{i}]", out)
        if hostname is not None and (len(hostname) > 253 or not _HOSTNAME.fullmatch(hostname)):
            out.append(_bad(f"spec.hostnames[{i}]", "must be a lower-case DNS name, optionally "
                            "starting with *.", hostname))
    rules = _as_list(spec.get("rules"), "spec.rules", out)
    if "rules" in spec and isinstance(spec["rules"], list) and not rules and not grpc:
        out.append(_bad("spec.rules", "must have at least one rule"))
    _max_items(rules, MAX_RULES, "spec.rules", out)
    total = 0
    first_index: dict[str, int] = {}
    for i, rule in enumerate(rules):
        path = f"spec.rules[{i}]"
        rule = _as_dict(rule, path, out)
        matches = rule.get("matches")
        total += len(matches) if isinstance(matches, list) else 0 if grpc else 1
        name = _as_str(rule.get("name"), f"{path}.name", out)
        if name is not None and (len(name) > 253 or not is_dns1123_subdomain(name)):
            out.append(_bad(f"{path}.name", "must be a DNS-1123 subdomain (a-z, 0-9, '-' and "
                            "'.')", name))
        elif name is not None and name in first_index:
            out.append(_bad(f"{path}.name", f"duplicates spec.rules[{first_index[name]}].name "
                            "(rule names must be unique within a route)", name))
        elif name is not None:
            first_index[name] = i
        _check_route_rule(rule, path, out, grpc=grpc)
    if total > MAX_TOTAL_MATCHES:
        out.append(_bad("spec.rules", f"must have at most {MAX_TOTAL_MATCHES} matches across "
                        "all rules", total))
    out.extend(_unreachable_route_rules(rules, grpc))


def _check_route_rule(rule: dict, path: str, out: list[_Finding], *, grpc: bool) -> None:
    matches = _as_list(rule.get("matches"), f"{path}.matches", out)
    _max_items(matches, MAX_MATCHES, f"{path}.matches", out)
    for k, match in enumerate(matches):
        _check_route_match(match, f"{path}.matches[{k}]", out, grpc=grpc)
    _check_route_filters(rule.get("filters"), f"{path}.filters", out, grpc=grpc)
    refs = _as_list(rule.get("backendRefs"), f"{path}.backendRefs", out)
    _max_items(refs, 16, f"{path}.backendRefs", out)
    weights = []
    for j, ref in enumerate(refs):
        ref_path = f"{path}.backendRefs[{j}]"
        weights.append(_check_backend_ref(ref, ref_path, out, weighted=True))
        if isinstance(ref, dict) and "filters" in ref:
            _check_route_filters(ref["filters"], f"{ref_path}.filters", out, grpc=grpc)
    if refs and all(weight == 0 for weight in weights):
        out.append(_Finding(WARNING, NO_TRAFFIC, f"{path}.backendRefs: all weights are zero; "
                            "the rule sends its requests nowhere (clients get errors)"))
    if "timeouts" in rule and not grpc:
        _check_route_timeouts(rule["timeouts"], f"{path}.timeouts", out)


def _check_route_match(match: Any, path: str, out: list[_Finding], *, grpc: bool) -> None:
    match = _as_dict(match, path, out)
    for field, longest in (("headers", 4096), ("queryParams", 1024)):
        if field not in match or (grpc and field == "queryParams"):
            continue
        conditions = _as_list(match[field], f"{path}.{field}", out)
        _max_items(conditions, MAX_CONDITIONS, f"{path}.{field}", out)
        for n, condition in enumerate(conditions):
            _check_route_condition(condition, f"{path}.{field}[{n}]", out, longest)
    if grpc:
        method = _as_dict(match.get("method"), f"{path}.method", out)
        kind = method.get("type", "Exact")
        if kind not in MATCH_TYPES:
            out.append(_bad(f"{path}.method.type", "must be Exact or RegularExpression", kind))
        if method and "service" not in method and "method" not in method:
            out.append(_bad(f"{path}.method", "must set service, method or both"))
        for field in ("service", "method"):
            text = _as_str(method.get(field), f"{path}.method.{field}", out)
            if kind == "RegularExpression" and text and _regex_problem(text):
                out.append(_bad(f"{path}.method.{field}", "is not a valid RE2 regular "
                                f"expression: {_cut(_regex_problem(text))}", text))
        return
    if "method" in match and match["method"] not in HTTP_METHODS:
        out.append(_bad(f"{path}.method", f"must be one of {', '.join(HTTP_METHODS)}",
                        match["method"]))
    if "path" in match:
        path_match = _as_dict(match["path"], f"{path}.path", out)
        kind = path_match.get("type", "PathPrefix")
        value = _as_str(path_match.get("value", "/"), f"{path}.path.value", out)
        if kind not in PATH_MATCH_TYPES:
            out.append(_bad(f"{path}.path.type", f"must be one of {', '.join(PATH_MATCH_TYPES)}",
                            kind))
        elif value is not None and len(value) > 1024:
            out.append(_bad(f"{path}.path.value", "must be at most 1024 characters", len(value)))
        elif value is not None and kind != "RegularExpression" and not value.startswith("/"):
            out.append(_bad(f"{path}.path.value", "must be an absolute path starting with /",
                            value))
        elif value is not None and kind == "RegularExpression" and _regex_problem(value):
            out.append(_bad(f"{path}.path.value", "is not a valid RE2 regular expression: "
                            f"{_cut(_regex_problem(value))}", value))


def _check_route_condition(value: Any, path: str, out: list[_Finding], longest: int) -> None:
    """A header or query parameter match: `{name, value, type}`."""
    condition = _as_dict(value, path, out)
    name = condition.get("name")
    if name is None or name == "":
        out.append(_bad(f"{path}.name", "is required"))
    elif not isinstance(name, str) or len(name) > 256 or not is_header_name(name):
        out.append(_bad(f"{path}.name", "must be an HTTP token (letters, digits and "
                        "!#$%&'*+-.^_`|~ only), at most 256 characters", name))
    kind = condition.get("type", "Exact")
    if kind not in MATCH_TYPES:
        out.append(_bad(f"{path}.type", "must be Exact or RegularExpression", kind))
    text = _as_str(condition.get("value"), f"{path}.value", out)
    if condition.get("value") in (None, ""):
        out.append(_bad(f"{path}.value", "is required (a non-empty string)"))
    elif text is not None and len(text) > longest:
        out.append(_bad(f"{path}.value", f"must be at most {longest} characters", len(text)))
    elif text is not None and kind == "RegularExpression" and _regex_problem(text):
        out.append(_bad(f"{path}.value", "is not a valid RE2 regular expression: "
                        f"{_cut(_regex_problem(text))}", text))


def _check_backend_ref(value: Any, path: str, out: list[_Finding], *,
                       weighted: bool) -> int | None:
    """A backendRef (or a mirror's); returns its weight (the API's default 1 when absent)."""
    if not isinstance(value, dict):
        out.append(_bad(path, "must be a mapping", value))
        return None
    ref = value
    if not ref.get("name"):
        out.append(_bad(f"{path}.name", "is required"))
    _as_str(ref.get("name"), f"{path}.name", out)
    _check_int(ref.get("port"), f"{path}.port", out, 1, 65535)
    if ref.get("group", "") == "" and ref.get("kind", "Service") == "Service" \
            and ref.get("port") is None:
        out.append(_bad(path, "must have a port: it refers to a Service"))
    if not weighted:
        return None
    weight = ref.get("weight")
    if weight is None:
        return 1
    return _check_int(weight, f"{path}.weight", out, 0, MAX_WEIGHT)


def _check_route_filters(value: Any, path: str, out: list[_Finding], *, grpc: bool) -> None:
    filters = _as_list(value, path, out)
    _max_items(filters, 16, path, out)
    types = GRPC_FILTERS if grpc else HTTP_FILTERS
    for k, item in enumerate(filters):
        item_path = f"{path}[{k}]"
        item = _as_dict(item, item_path, out)
        kind = item.get("type")
        if kind not in types:
            out.append(_bad(f"{item_path}.type", f"must be one of {', '.join(types)}", kind))
            continue
        if item.get(types[kind]) is None:
            out.append(_bad(item_path, f"{types[kind]} is required when type is {kind}"))
        for other in types.values():
            if other != types[kind] and other in item:
                out.append(_bad(f"{item_path}.{other}", f"must not be set when type is {kind}"))
        if kind == "RequestMirror" and item.get("requestMirror") is not None:
            _check_request_mirror(item["requestMirror"], f"{item_path}.requestMirror", out)


def _check_request_mirror(value: Any, path: str, out: list[_Finding]) -> None:
    mirror = _as_dict(value, path, out)
    if mirror.get("backendRef") is None:
        out.append(_bad(f"{path}.backendRef", "is required"))
    else:
        _check_backend_ref(mirror["backendRef"], f"{path}.backendRef", out, weighted=False)
    if "percent" in mirror and "fraction" in mirror:
        out.append(_bad(path, "must set only one of percent or fraction"))
    _check_int(mirror.get("percent"), f"{path}.percent", out, 0, 100)
    if "fraction" not in mirror:
        return
    fraction = _as_dict(mirror["fraction"], f"{path}.fraction", out)
    if fraction.get("numerator") is None:
        out.append(_bad(f"{path}.fraction.numerator", "is required"))
    numerator = _check_int(fraction.get("numerator"), f"{path}.fraction.numerator", out, 0)
    denominator = _check_int(fraction.get("denominator", 100), f"{path}.fraction.denominator",
                             out, 1)
    if numerator is not None and denominator is not None and 0 <= numerator \
            and 1 <= denominator < numerator:
        out.append(_bad(f"{path}.fraction", "numerator must be at most the denominator",
                        f"{numerator}/{denominator}"))


def _check_route_timeouts(value: Any, path: str, out: list[_Finding]) -> None:
    timeouts = _as_dict(value, path, out)
    seconds = {}
    for field in ("request", "backendRequest"):
        text = _as_str(timeouts.get(field), f"{path}.{field}", out)
        if text is None:
            continue
        seconds[field] = duration_seconds(text)
        if seconds[field] is None:
            out.append(_bad(f"{path}.{field}", "must be a Gateway API duration such as 10s, "
                            "500ms or 1m30s (1 to 4 parts of up to 5 digits with h, m, s or ms)",
                            text))
    request, backend = seconds.get("request"), seconds.get("backendRequest")
    if request and backend is not None and backend > request:  # a request of 0s is "off"
        out.append(_bad(f"{path}.backendRequest", "must not be longer than the request timeout "
                        f"({timeouts['request']})", timeouts["backendRequest"]))


def _route_match_key(matches: Any, grpc: bool) -> str | None:
    """A rule's matches as one canonical text (order and the API's defaults ignored); None when
    they are not a list of mappings."""
    if matches is None or matches == []:
        matches = [{}]
    if not isinstance(matches, list) or not all(isinstance(m, dict) for m in matches):
        return None
    if not grpc:
        matches = [m if "path" in m else {**m, "path": {"type": "PathPrefix", "value": "/"}}
                   for m in matches]
    return "|".join(sorted({_CANONICAL.encode(m) for m in matches}))


def _unreachable_route_rules(rules: list, grpc: bool) -> list[_Finding]:
    """A rule whose matches are exactly an earlier rule's: ties go to the earlier rule, so
    it never gets a request."""
    out: list[_Finding] = []
    seen: dict[str, int] = {}
    for n, rule in enumerate(rules):
        key = _route_match_key(rule.get("matches"), grpc) if isinstance(rule, dict) else None
        if key is None:
            continue
        if key in seen:
            out.append(_Finding(WARNING, UNREACHABLE_ROUTE_RULE,
                                f"spec.rules[{n}]: rule {_rule_label(rules, n)} can never match: "
                                f"rule {_rule_label(rules, seen[key])} has the same matches "
                                "and, listed first, wins every tie"))
        else:
            seen[key] = n
    return out


# --- objects -------------------------------------------------------------------------------


def _identity(obj: dict) -> tuple[str, str, str]:
    """(kind, namespace, name); the namespace defaults to `default` like kubectl's."""
    metadata = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
    kind = obj.get("kind") if isinstance(obj.get("kind"), str) else ""
    namespace = metadata.get("namespace")
    name = metadata.get("name")
    return (kind,
            namespace if isinstance(namespace, str) and namespace else "default",
            name if isinstance(name, str) else "")


def _shown_identity(identity: tuple[str, str, str]) -> tuple[str, str, str]:
    """An identity as messages show it: each part on one line, cut."""
    return _cut(identity[0]), _cut(identity[1]), _cut(identity[2])


def is_kubernetes_object(doc: Any) -> bool:
    """A mapping with a non-empty string `apiVersion` and `kind`."""
    return (isinstance(doc, dict) and isinstance(doc.get("apiVersion"), str)
            and isinstance(doc.get("kind"), str) and bool(doc["apiVersion"]) and bool(doc["kind"]))


def _is_istio_object(obj: Any, kind: str) -> bool:
    return (is_kubernetes_object(obj) and obj["kind"] == kind
            and obj["apiVersion"] in API_VERSIONS)


def _is_gateway_route(obj: dict, kind: str) -> bool:
    """An HTTPRoute or GRPCRoute of the Gateway API group (another group's kind is not ours)."""
    return kind in ROUTE_API_VERSIONS and obj["apiVersion"].split("/")[0] == GATEWAY_GROUP


def validate_object(obj: dict) -> list[Message]:
    """Single-object checks: what Istio's validating webhook (or, for HTTPRoute and GRPCRoute,
    the API server) rejects, plus warnings.

    Objects of other kinds get no messages. Error-level messages mean the object would be refused.
    """
    if not is_kubernetes_object(obj):
        kind, namespace, name = _shown_identity(_identity(obj)) if isinstance(obj, dict) \
            else ("", "default", "")
        return [Message(ERROR, SCHEMA_ERROR, kind, namespace, name,
                        "not a Kubernetes object: apiVersion and kind are required")]
    return _validate(obj, _identity(obj))


def _validate(obj: dict, identity: tuple[str, str, str]) -> list[Message]:
    kind = identity[0]
    if kind in KINDS:
        versions = API_VERSIONS
        check = _check_virtual_service if kind == "VirtualService" else _check_destination_rule
    elif _is_gateway_route(obj, kind):
        versions = ROUTE_API_VERSIONS[kind]
        check = functools.partial(_check_route, grpc=kind == "GRPCRoute")
    else:
        return []
    out: list[_Finding] = []
    if obj["apiVersion"] not in versions:
        out.append(_bad("apiVersion", f"must be one of {', '.join(versions)} for "
                        f"{kind}", obj["apiVersion"]))
    else:
        metadata = _as_dict(obj.get("metadata"), "metadata", out)
        if not metadata.get("name"):
            out.append(_bad("metadata.name", "is required"))
        if obj.get("spec") is None:
            out.append(_bad("spec", "is required"))
        spec = _as_dict(obj.get("spec"), "spec", out)
        check(spec, out)
    if not out:
        return []
    _, namespace, name = _shown_identity(identity)
    return [Message(f.level, f.code, kind, namespace, name, f.text) for f in out]


# --- cross-object: IST0101 -----------------------------------------------------------------


def _subsets_by_host(rules: Iterable[tuple[dict, tuple[str, str, str]]]) -> dict[str, set[str]]:
    """Fully qualified DestinationRule host -> the subset names defined for it."""
    subsets: dict[str, set[str]] = {}
    for obj, identity in rules:
        if not isinstance(obj.get("spec"), dict):
            continue
        host = obj["spec"].get("host")
        if not isinstance(host, str) or not host:
            continue
        names = subsets.setdefault(host_fqdn(host, identity[1]), set())
        for subset in obj["spec"].get("subsets") or []:
            if isinstance(subset, dict) and isinstance(subset.get("name"), str):
                names.add(subset["name"])
    return subsets


def _defined_subsets(fqdn: str, subsets: dict[str, set[str]]) -> set[str]:
    """Subsets of the DestinationRule that applies: the exact host, else the closest wildcard."""
    if fqdn in subsets:
        return subsets[fqdn]
    labels = fqdn.split(".")
    for start in range(1, len(labels)):  # `*.b.c` before `*.c`: one lookup per label
        wildcard = "*." + ".".join(labels[start:])
        if wildcard in subsets:
            return subsets[wildcard]
    return subsets.get("*", set())


def _destinations(spec: dict) -> list[tuple[str, dict]]:
    """(reference type, destination) for every route destination and mirror of a VS."""
    found: list[tuple[str, dict]] = []
    for protocol in ("http", "tcp", "tls"):
        rules = spec.get(protocol)
        for rule in rules if isinstance(rules, list) else []:
            if not isinstance(rule, dict):
                continue
            routes = rule.get("route") if isinstance(rule.get("route"), list) else []
            found += [("host+subset", route.get("destination")) for route in routes
                      if isinstance(route, dict)]
            found.append(("mirror+subset", rule.get("mirror")))
            mirrors = rule.get("mirrors") if isinstance(rule.get("mirrors"), list) else []
            found += [("mirror+subset", mirror.get("destination")) for mirror in mirrors
                      if isinstance(mirror, dict)]
    return [(ref, dest) for ref, dest in found if isinstance(dest, dict)]


def _missing_subsets(vs: dict, identity: tuple[str, str, str],
                     subsets: dict[str, set[str]]) -> list[Message]:
    namespace = identity[1]
    spec = vs.get("spec") if isinstance(vs.get("spec"), dict) else {}
    messages: dict[Message, None] = {}  # once each, in order
    for ref, dest in _destinations(spec):
        host, subset = dest.get("host"), dest.get("subset")
        if not isinstance(host, str) or not host or not isinstance(subset, str) or not subset:
            continue  # no subset needs no DestinationRule; a bad host is a schema error
        if subset in _defined_subsets(host_fqdn(host, namespace), subsets):
            continue
        messages[Message(ERROR, REFERENCE_NOT_FOUND, *_shown_identity(identity),
                         f"Referenced {ref} in destinationrule not found: "
                         f"{json.dumps(_cut(f'{host}+{subset}'))}")] = None
    return list(messages)


# --- cross-object: IST0109 -----------------------------------------------------------------


def _mesh_hosts(vs: dict, namespace: str) -> set[str]:
    """Fully qualified hosts a VirtualService routes for sidecars (the `mesh` gateway)."""
    spec = vs.get("spec") if isinstance(vs.get("spec"), dict) else {}
    gateways = spec.get("gateways")
    if isinstance(gateways, list) and gateways and "mesh" not in gateways:
        return set()
    hosts = spec.get("hosts") if isinstance(spec.get("hosts"), list) else []
    return {host_fqdn(host, namespace) for host in hosts if isinstance(host, str) and host}


def _conflicting_hosts(services: list[tuple[dict, tuple[str, str, str]]]) -> list[Message]:
    """Two VirtualServices for one host on the mesh gateway: sidecars apply only one of them."""
    owners: dict[str, set[tuple[str, str, str]]] = {}
    for obj, identity in services:  # one resource given twice (two files) is still one resource
        for host in _mesh_hosts(obj, identity[1]):
            owners.setdefault(host, set()).add(identity)
    messages: list[Message] = []
    for host, services in sorted(owners.items()):
        if len(services) < 2:
            continue
        shown = [_shown_identity(identity) for identity in sorted(services)]
        listed = [f"{namespace}/{name}" for _, namespace, name in shown[:MAX_LISTED]]
        names = ", ".join(listed) + (
            f" and {len(shown) - MAX_LISTED} more" if len(shown) > MAX_LISTED else "")
        for kind, namespace, name in shown:
            messages.append(Message(
                ERROR, CONFLICTING_HOSTS, kind, namespace, name,
                f"The VirtualServices {names} associated with mesh gateway define the same "
                f"host {json.dumps(_cut(host))} which can lead to undefined behavior. This can be "
                "fixed by merging the conflicting VirtualServices into a single resource."))
    return messages


# --- cross-object: Gateway API routes ------------------------------------------------------


def _is_service_ref(ref: Any) -> bool:
    return (isinstance(ref, dict) and ref.get("group", "") == ""
            and ref.get("kind", "Service") == "Service")


def _route_backend_refs(spec: dict) -> list[tuple[str, dict]]:
    """(field path, backendRef) of every backend and mirror of a route's rules."""
    found: list[tuple[str, Any]] = []

    def mirrors(filters: Any, path: str) -> None:
        for k, item in enumerate(filters if isinstance(filters, list) else []):
            mirror = item.get("requestMirror") if isinstance(item, dict) else None
            if isinstance(mirror, dict):
                found.append((f"{path}[{k}].requestMirror.backendRef", mirror.get("backendRef")))

    rules = spec.get("rules")
    for i, rule in enumerate(rules if isinstance(rules, list) else []):
        if not isinstance(rule, dict):
            continue
        refs = rule.get("backendRefs")
        for j, ref in enumerate(refs if isinstance(refs, list) else []):
            found.append((f"spec.rules[{i}].backendRefs[{j}]", ref))
            if isinstance(ref, dict):
                mirrors(ref.get("filters"), f"spec.rules[{i}].backendRefs[{j}].filters")
        mirrors(rule.get("filters"), f"spec.rules[{i}].filters")
    return [(path, ref) for path, ref in found if _is_service_ref(ref)]


def _missing_backends(route: dict, identity: tuple[str, str, str],
                      services: set[tuple[str, str]]) -> list[Message]:
    """Backends and mirrors naming a Service the files do not hold. Without any Service in the
    files nothing can be known, so nothing is said."""
    if not services:
        return []
    spec = route.get("spec") if isinstance(route.get("spec"), dict) else {}
    messages: dict[Message, None] = {}
    for path, ref in _route_backend_refs(spec):
        name, namespace = ref.get("name"), ref.get("namespace")
        namespace = namespace if isinstance(namespace, str) and namespace else identity[1]
        if not isinstance(name, str) or not name or (namespace, name) in services:
            continue
        messages[Message(ERROR, REFERENCE_NOT_FOUND, *_shown_identity(identity),
                         f"{path}: Referenced Service not found: "
                         f"{json.dumps(_cut(f'{namespace}/{name}'))}")] = None
    return list(messages)


def _gateway_hosts(vs: dict, namespace: str) -> set[str]:
    """Fully qualified hosts a VirtualService routes on gateways other than the mesh."""
    spec = vs.get("spec") if isinstance(vs.get("spec"), dict) else {}
    gateways = spec.get("gateways")
    if not isinstance(gateways, list) or not any(g != "mesh" for g in gateways):
        return set()
    hosts = spec.get("hosts") if isinstance(spec.get("hosts"), list) else []
    return {host_fqdn(host, namespace) for host in hosts if isinstance(host, str) and host}


def _route_hosts(route: dict, namespace: str) -> list[tuple[str, str, bool]]:
    """(field path, fully qualified host, on the mesh?) a route routes for: the Services of
    its GAMMA parentRefs (mesh), and its hostnames when a parentRef is a Gateway."""
    spec = route.get("spec") if isinstance(route.get("spec"), dict) else {}
    parents = spec.get("parentRefs") if isinstance(spec.get("parentRefs"), list) else []
    found = []
    on_gateway = False
    for i, parent in enumerate(parents):
        if not isinstance(parent, dict) or not isinstance(parent.get("name"), str):
            continue
        if parent.get("kind") == "Service" and parent.get("group") == "":
            parent_namespace = parent.get("namespace")
            if not isinstance(parent_namespace, str) or not parent_namespace:
                parent_namespace = namespace
            found.append((f"spec.parentRefs[{i}]", host_fqdn(
                f"{parent['name']}.{parent_namespace}", namespace), True))
        else:
            on_gateway = True
    hostnames = spec.get("hostnames") if isinstance(spec.get("hostnames"), list) else []
    if on_gateway:
        found += [(f"spec.hostnames[{k}]", host_fqdn(hostname, namespace), False)
                  for k, hostname in enumerate(hostnames) if isinstance(hostname, str) and hostname]
    return found


def _mixed_routers(virtual_services: list[tuple[dict, tuple[str, str, str]]],
                   routes: list[tuple[dict, tuple[str, str, str]]]) -> list[Message]:
    """One workload routed by a VirtualService and an HTTPRoute (or GRPCRoute): Istio does not
    merge them, so which one applies is undefined. Said once, on the route, naming both."""
    if not virtual_services or not routes:
        return []
    on_gateways: dict[str, set[tuple[str, str, str]]] = {}  # host -> VirtualServices
    on_mesh: dict[str, set[tuple[str, str, str]]] = {}
    for vs, identity in virtual_services:
        for host in _gateway_hosts(vs, identity[1]):
            on_gateways.setdefault(host, set()).add(identity)
        for host in _mesh_hosts(vs, identity[1]):
            on_mesh.setdefault(host, set()).add(identity)
    messages: dict[Message, None] = {}
    for route, identity in routes:
        kind, namespace, name = _shown_identity(identity)
        for path, host, mesh in _route_hosts(route, identity[1]):
            found = sorted((on_mesh if mesh else on_gateways).get(host, ()))
            if not found:
                continue
            listed = [f"{n}/{v}" for _, n, v in map(_shown_identity, found[:MAX_LISTED])]
            names = ", ".join(listed) + (
                f" and {len(found) - MAX_LISTED} more" if len(found) > MAX_LISTED else "")
            where = "on the mesh" if mesh else "on a gateway"
            messages[Message(
                ERROR, MIXED_ROUTERS, kind, namespace, name,
                f"{path}: host {json.dumps(_cut(host))} is routed {where} by both {kind} "
                f"{namespace}/{name} and VirtualService {names}; Istio does not support mixing "
                f"VirtualService and {kind} on one workload")] = None
    return list(messages)


def analyze(objects: list[dict]) -> list[Message]:
    """`validate_object` for each object, plus checks across objects (IST0101, IST0109, CK0003).

    Linear in the objects: lookups by host, never a search through every other object."""
    known = [(obj, _identity(obj)) for obj in objects if is_kubernetes_object(obj)]
    istio = {id(obj): kind for obj, (kind, _, _) in known
             if kind in KINDS and obj["apiVersion"] in API_VERSIONS}
    subsets = _subsets_by_host(pair for pair in known if istio.get(id(pair[0])) ==
                               "DestinationRule")
    kube_services = {(namespace, name) for obj, (kind, namespace, name) in known
                     if kind == "Service" and obj["apiVersion"] == "v1"}
    messages: list[Message] = []
    services = []
    routes = []
    identities = {id(obj): identity for obj, identity in known}
    for obj in objects:
        identity = identities.get(id(obj))
        if identity is None:
            messages += validate_object(obj)
            continue
        messages += _validate(obj, identity)
        if istio.get(id(obj)) == "VirtualService":
            messages += _missing_subsets(obj, identity, subsets)
            services.append((obj, identity))
        elif _is_gateway_route(obj, identity[0]) \
                and obj["apiVersion"] in ROUTE_API_VERSIONS[identity[0]]:
            messages += _missing_backends(obj, identity, kube_services)
            routes.append((obj, identity))
    return messages + _conflicting_hosts(services) + _mixed_routers(services, routes)


def has_errors(messages: Iterable[Message]) -> bool:
    """True when Istio would refuse the configuration (any Error-level message)."""
    return any(message.level == ERROR for message in messages)


# --- command line --------------------------------------------------------------------------


class UnreadableInput(BadInput):
    """A file that cannot be read as YAML Kubernetes documents: refused input (BAD_INPUT)."""

    def __init__(self, where: str, problem: str) -> None:
        super().__init__(where, where, problem)

    def __str__(self) -> str:
        return f"{self.field}: {self.problem}"


def load_files(paths: Iterable[str]) -> list[tuple[str, dict]]:
    """(label naming file and document, document) for every non-empty document.

    `kind: List` documents are opened into their items. Raises UnreadableInput naming the file.
    """
    documents: list[tuple[str, dict]] = []
    for path in paths:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
            raise UnreadableInput(path, f"cannot read file: {_cut(reason)}") from None
        try:
            loaded = yamlsafe.load_all(text, str(path))
        except BadInput as err:  # duplicate keys, bombs, syntax: one line naming the file
            raise UnreadableInput(path, err.problem) from None
        for number, doc in enumerate(loaded, start=1):
            if doc is None:
                continue
            label = f"{path} document {number}"
            if not isinstance(doc, dict):
                raise UnreadableInput(label, f"is not a mapping (got a {type(doc).__name__})")
            if doc.get("kind") != "List":
                documents.append((label, doc))
                continue
            # kubectl opens a List into its items and refuses one whose items are not objects.
            items = doc.get("items")
            if items is None:
                continue
            if not isinstance(items, list):
                raise UnreadableInput(label, f"items of a kind: List must be a list (got a "
                                             f"{type(items).__name__})")
            for k, item in enumerate(items):
                if not isinstance(item, dict):
                    raise UnreadableInput(f"{label} item {k}", f"is not a mapping (got a "
                                                               f"{type(item).__name__})")
                if item.get("kind") == "List":
                    raise UnreadableInput(f"{label} item {k}", "is a List inside a List")
                documents.append((f"{label} item {k}", item))
    return documents


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `canarykit validate`."""
    parser.add_argument("files", nargs="+", metavar="FILE",
                        help="YAML files (several documents each) with VirtualServices, "
                             "DestinationRules, HTTPRoutes, GRPCRoutes and the Services they "
                             "route to; other kinds are ignored")
    parser.add_argument("--output", "-o", choices=("text", "json"), default="text",
                        help="text: one istioctl-style line per message; json: a list of objects")


def run(args: argparse.Namespace) -> int:
    """OK without Error-level messages, FAILED with any, BAD_INPUT when a file cannot be read."""
    # Megabytes of documents, loaded once, without reference cycles: the cyclic collector
    # would only rescan them (a third of the time); reference counting still frees everything.
    collecting = gc.isenabled()
    gc.disable()
    try:
        documents = load_files(args.files)
        messages = [Message(ERROR, SCHEMA_ERROR, "", "", label,
                            "not a Kubernetes object: apiVersion and kind are required")
                    for label, doc in documents if not is_kubernetes_object(doc)]
        messages += analyze([doc for _, doc in documents if is_kubernetes_object(doc)])
    except UnreadableInput as err:
        print(f"canarykit validate: {err}", file=sys.stderr)
        return exit_code_for(err)
    finally:
        if collecting:
            gc.enable()
    if args.output == "json":
        print(json.dumps([message.to_dict() for message in messages], indent=2))
    elif messages:
        print("\n".join(message.format() for message in messages))
    else:
        print("No validation issues found.")
    return ExitCode.FAILED if has_errors(messages) else ExitCode.OK
