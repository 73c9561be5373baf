"""A local Kubernetes API server for the lab and the tests (`canarykit lab apiserver`).

No real API server runs on the lab machines, so this one speaks the real REST protocol
(discovery, CRUD, merge and JSON patch, watch, dry run, optimistic concurrency, Status errors)
for the few kinds canarykit touches, Istio's and the Gateway API's (HTTPRoute, GRPCRoute and
Gateway as the v1.6.1 standard-channel CRDs serve them: their limits, CEL rules and defaults
are written out below, and canarykit's validator runs as the webhook for every custom kind).
Production code reaches it only through the official `kubernetes` client and a kubeconfig,
exactly as it would reach a cluster. It serves plain HTTP by default; `--tls` serves HTTPS with
a self-signed certificate, which kubectl needs because client-go sends bearer tokens only over
TLS.

Hostile input stays bounded: the token is checked before a body is read, a body is limited
(`--max-body-bytes`, Kubernetes' 3 MiB by default; 413 past it), framing that cannot be trusted
is a 400, every read and write has a timeout, and a watch ends when its client hangs up. A
change is journaled and fsynced before it is served, so a failed save changes nothing.
`GET /debug/requests` (administrator only) counts the requests served by verb, resource and
status code, so a benchmark can tell what a client's run costs the server. `POST /debug/faults`
(administrator only) makes the next matching requests fail as an overloaded server's do (429
with Retry-After, 5xx, or an answer that comes late, after the change was made), so tests can
show what a client does then.
"""

from __future__ import annotations

import argparse
import base64
import copy
import hashlib
import hmac
import json
import os
import re
import secrets
import select
import socket
import ssl
import subprocess
import sys
import threading
import time
import traceback
import uuid
from collections import Counter, deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jsonpatch
import yaml

from canarykit.core import names, times
from canarykit.core.files import write_atomically
from canarykit.lab import process_main

USER = "canarykit-admin"
GROUPS = ["system:masters", "system:authenticated"]
CLUSTER = "canarykit-lab"
SNAPSHOT_FILE = "state.json"  # the whole state as of its resourceVersion
JOURNAL_FILE = "journal.jsonl"  # the changes since the snapshot, one JSON line each
COMPACT_MIN_BYTES = 4 * 1024 * 1024  # the journal is folded into the snapshot past this size
EVENT_HISTORY = 10_000
DEFAULT_WATCH_SECONDS = 1800
WATCH_CHECK_SECONDS = 1.0  # how often an idle watch looks whether its client hung up
MAX_BODY_BYTES = 3 * 1024 * 1024  # Kubernetes' own request body limit (3 MiB)
IO_TIMEOUT_SECONDS = 30.0  # a read or write stalled this long ends the connection
LINGER_SECONDS = 2.0  # after refusing an unread body, how long to let the client read the answer
BODY_METHODS = ("POST", "PUT", "PATCH")
OBJECT_VERBS = ("create", "delete", "get", "list", "patch", "update", "watch")
PUBLIC_PATHS = {"/healthz", "/readyz", "/livez", "/version"}
REQUEST_COUNTS_PATH = "/debug/requests"  # GET: the requests served so far (administrator)
FAULTS_PATH = "/debug/faults"  # POST: the next matching requests fail (administrator)
FAULT_REASONS = {429: "TooManyRequests", 500: "InternalError", 502: "BadGateway",
                 503: "ServiceUnavailable", 504: "Timeout"}
JSON = "application/json"


@dataclass(frozen=True)
class Resource:
    """One REST resource the server serves; versions[0] is the preferred (storage) version."""

    group: str
    versions: tuple[str, ...]
    plural: str
    singular: str
    kind: str
    namespaced: bool = True
    short_names: tuple[str, ...] = ()
    verbs: tuple[str, ...] = OBJECT_VERBS
    returns_deleted_object: bool = False

    @property
    def qualified(self) -> str:
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def group_kind(self) -> str:
        return f"{self.kind}.{self.group}" if self.group else self.kind

    @property
    def is_custom(self) -> bool:
        """A custom resource (a CRD's kind): Istio's and the Gateway API's."""
        return self.group in CUSTOM_GROUPS

    @property
    def is_gateway_api(self) -> bool:
        return self.group == GATEWAY_GROUP

    def api_version(self, version: str) -> str:
        return f"{self.group}/{version}" if self.group else version


ISTIO_VERSIONS = ("v1", "v1beta1", "v1alpha3")
GATEWAY_GROUP = "gateway.networking.k8s.io"
CUSTOM_GROUPS = ("networking.istio.io", GATEWAY_GROUP)
RESOURCES = [
    Resource("", ("v1",), "namespaces", "namespace", "Namespace", namespaced=False,
             short_names=("ns",), verbs=("create", "get", "list", "watch")),
    Resource("", ("v1",), "services", "service", "Service", short_names=("svc",),
             returns_deleted_object=True),
    Resource("apps", ("v1",), "deployments", "deployment", "Deployment", short_names=("deploy",)),
    Resource("coordination.k8s.io", ("v1",), "leases", "lease", "Lease"),
    Resource("networking.istio.io", ISTIO_VERSIONS, "virtualservices", "virtualservice",
             "VirtualService", short_names=("vs",), returns_deleted_object=True),
    Resource("networking.istio.io", ISTIO_VERSIONS, "destinationrules", "destinationrule",
             "DestinationRule", short_names=("dr",), returns_deleted_object=True),
    Resource("authentication.k8s.io", ("v1",), "selfsubjectreviews", "selfsubjectreview",
             "SelfSubjectReview", namespaced=False, verbs=("create",)),
    Resource("", ("v1",), "serviceaccounts", "serviceaccount", "ServiceAccount",
             short_names=("sa",)),
    Resource("rbac.authorization.k8s.io", ("v1",), "roles", "role", "Role"),
    Resource("rbac.authorization.k8s.io", ("v1",), "rolebindings", "rolebinding", "RoleBinding"),
    # Gateway API v1.6.1, standard channel: the versions its CRDs serve (v1 stored).
    Resource(GATEWAY_GROUP, ("v1", "v1beta1"), "httproutes", "httproute", "HTTPRoute",
             returns_deleted_object=True),
    Resource(GATEWAY_GROUP, ("v1",), "grpcroutes", "grpcroute", "GRPCRoute",
             returns_deleted_object=True),
    Resource(GATEWAY_GROUP, ("v1", "v1beta1"), "gateways", "gateway", "Gateway",
             short_names=("gtw",), returns_deleted_object=True),
]
SERVICE_ACCOUNT_PREFIX = "system:serviceaccount:"
TOKEN_PREFIX = "sa."  # service-account tokens: sa.NAMESPACE.NAME.MAC, checked without state
GROUPS_SERVED = list(dict.fromkeys(r.group for r in RESOURCES if r.group))
NAMESPACES = RESOURCES[0]


def find_resource(group: str, version: str, plural: str) -> Resource | None:
    for res in RESOURCES:
        if res.group == group and version in res.versions and res.plural == plural:
            return res
    return None


# ---------------------------------------------------------------- errors as Status objects


class ApiError(Exception):
    """An error answered as a Kubernetes `Status` with the given HTTP code."""

    def __init__(self, code: int, reason: str, message: str, details: dict | None = None):
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details

    def status(self) -> dict:
        body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": self.message, "reason": self.reason, "code": self.code}
        if self.details is not None:
            body["details"] = self.details
        return body


def _details(res: Resource, name: str, **extra: Any) -> dict:
    return {"name": name, "group": res.group, "kind": res.plural, **extra}


def not_found(res: Resource, name: str) -> ApiError:
    return ApiError(404, "NotFound", f'{res.qualified} "{name}" not found', _details(res, name))


def conflict(res: Resource, name: str, why: str) -> ApiError:
    return ApiError(409, "Conflict", f'Operation cannot be fulfilled on {res.qualified} "{name}": '
                    f"{why}", _details(res, name))


def stale(res: Resource, name: str) -> ApiError:
    return conflict(res, name, "the object has been modified; please apply your changes to the "
                    "latest version and try again")


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def too_large(limit: int) -> ApiError:
    return ApiError(413, "RequestEntityTooLarge", f"Request entity too large: limit is {limit}")


def cannot_save(err: OSError) -> ApiError:
    return ApiError(500, "InternalError", f"Internal error occurred: the change could not be "
                    f"saved, nothing was changed: {err}")


def invalid(res: Resource, name: str, causes: list[dict]) -> ApiError:
    texts = [f"{c['field']}: {c['message']}" if c.get("field") else c["message"] for c in causes]
    joined = texts[0] if len(texts) == 1 else "[" + ", ".join(texts) + "]"
    return ApiError(422, "Invalid", f'{res.group_kind} "{name}" is invalid: {joined}',
                    {"name": name, "group": res.group, "kind": res.kind, "causes": causes})


def unsupported_media_type(content_type: str) -> ApiError:
    return ApiError(415, "UnsupportedMediaType", f"the body of the request was in an unknown "
                    f"format ({content_type}) - accepted media types include: "
                    "application/json-patch+json, application/merge-patch+json")


def method_not_allowed(verb: str, res: Resource) -> ApiError:
    return ApiError(405, "MethodNotAllowed",
                    f"the server does not allow this method on the requested resource "
                    f"({verb} {res.qualified})")


def cause(field: str, reason: str, message: str) -> dict:
    return {"reason": reason, "message": message, "field": field}


# ---------------------------------------------------------------- validation




def _invalid_value(value: Any, detail: str) -> str:
    return f"Invalid value: {json.dumps(value)}: {detail}"


def schema_causes(res: Resource, obj: dict) -> list[dict]:
    """The checks every API server does before admission: names, label maps, Deployment shape."""
    causes: list[dict] = []
    meta = obj.get("metadata") or {}
    name = meta.get("name")
    label_only = res.plural in ("namespaces", "services")
    valid, limit = ((names.is_dns1123_label, 63) if label_only
                    else (names.is_dns1123_subdomain, 253))
    if not name:
        causes.append(cause("metadata.name", "FieldValueRequired", "Required value: name or "
                            "generateName is required"))
    elif not valid(name):
        causes.append(cause("metadata.name", "FieldValueInvalid", _invalid_value(
            name, f"a lowercase RFC 1123 {'label' if label_only else 'subdomain'} must consist "
            "of lower case alphanumeric characters, '-' or '.', and must start and end with an "
            f"alphanumeric character (at most {limit} characters)")))
    for key in ("labels", "annotations"):
        value = meta.get(key)
        if value is None:
            continue
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            causes.append(cause(f"metadata.{key}", "FieldValueInvalid",
                                _invalid_value(value, "must be a map of string to string")))
    spec = obj.get("spec")
    if res.plural == "deployments":
        causes += _deployment_causes(spec if isinstance(spec, dict) else {})
    if res.plural == "services":
        ports = (spec or {}).get("ports") if isinstance(spec, dict) else None
        if not ports:
            causes.append(cause("spec.ports", "FieldValueRequired", "Required value"))
        for i, port in enumerate(ports or []):
            number = port.get("port") if isinstance(port, dict) else None
            if not isinstance(number, int) or not 0 < number < 65536:
                causes.append(cause(f"spec.ports[{i}].port", "FieldValueInvalid",
                                    _invalid_value(number, "must be between 1 and 65535")))
    if res.is_gateway_api:
        causes += gateway_api_causes(res, obj)
    return causes


def _deployment_causes(spec: dict) -> list[dict]:
    selector = (spec.get("selector") or {}).get("matchLabels") or {}
    template = spec.get("template") or {}
    labels = (template.get("metadata") or {}).get("labels") or {}
    causes = []
    if not selector:
        causes.append(cause("spec.selector", "FieldValueRequired", "Required value"))
    elif any(labels.get(k) != v for k, v in selector.items()):
        causes.append(cause("spec.template.metadata.labels", "FieldValueInvalid", _invalid_value(
            labels, "`selector` does not match template `labels`")))
    if not (template.get("spec") or {}).get("containers"):
        causes.append(cause("spec.template.spec.containers", "FieldValueRequired",
                            "Required value"))
    return causes


# ---------------------------------------------------------------- Gateway API schema
#
# What the Gateway API v1.6.1 standard-channel CRDs enforce on HTTPRoute, GRPCRoute and Gateway
# (OpenAPI types, limits, enums, patterns and the CEL rules canarykit's routes meet), written
# out here so the server needs no CRD files. Messages and reasons are the API server's own.

GATEWAY_DURATION = re.compile(r"([0-9]{1,5}(h|m|s|ms)){1,4}")  # GEP-2257
_DURATION_PART = re.compile(r"([0-9]{1,5})(h|ms|m|s)")
_GROUP = re.compile(r"$|[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_KIND = re.compile(r"[a-zA-Z]([-a-zA-Z0-9]*[a-zA-Z0-9])?")
_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_HOSTNAME = re.compile(r"(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_HEADER_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+\-.^_`|~]+")
_PATH_CHARS = re.compile(r"(?:[-A-Za-z0-9/._~!$&'()*+,;=:@]|[%][0-9a-fA-F]{2})+")
HTTP_FILTERS = ("RequestHeaderModifier", "ResponseHeaderModifier", "RequestMirror",
                "RequestRedirect", "URLRewrite", "ExtensionRef", "CORS")
GRPC_FILTERS = ("RequestHeaderModifier", "ResponseHeaderModifier", "RequestMirror",
                "ExtensionRef")
HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")
_FILTER_FIELDS = {"RequestHeaderModifier": "requestHeaderModifier",
                  "ResponseHeaderModifier": "responseHeaderModifier",
                  "RequestMirror": "requestMirror", "RequestRedirect": "requestRedirect",
                  "URLRewrite": "urlRewrite", "ExtensionRef": "extensionRef", "CORS": "cors"}
_ONCE_FILTERS = ("CORS", "RequestHeaderModifier", "ResponseHeaderModifier", "RequestRedirect",
                 "URLRewrite")
_JSON_TYPES = {"object": dict, "array": list, "string": str, "integer": int}


def gateway_duration_seconds(text: str) -> float:
    """A GEP-2257 duration (`1h30m`, `500ms`) in seconds; the caller checked its pattern."""
    scale = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    return sum(int(n) * scale[unit] for n, unit in _DURATION_PART.findall(text))


class _Schema:
    """Collects Status causes worded as the API server words OpenAPI and CEL failures."""

    def __init__(self) -> None:
        self.causes: list[dict] = []

    def add(self, field: str, reason: str, message: str) -> None:
        self.causes.append(cause(field, reason, message))

    def cel(self, field: str, message: str) -> None:
        self.add(field, "FieldValueInvalid", f'Invalid value: "object": {message}')

    def typed(self, value: Any, field: str, kind: str) -> bool:
        """Whether `value` is of the JSON type (None counts as absent and passes)."""
        if value is None:
            return False
        wanted = _JSON_TYPES[kind]
        if isinstance(value, wanted) and not (kind == "integer" and isinstance(value, bool)):
            return True
        have = {dict: "object", list: "array", str: "string", bool: "boolean", int: "integer",
                float: "number"}.get(type(value), "null")
        self.add(field, "FieldValueTypeInvalid",
                 f'Invalid value: "{have}": {field} in body must be of type {kind}: "{have}"')
        return False

    def required(self, obj: dict, key: str, field: str) -> bool:
        if obj.get(key) is None:
            self.add(f"{field}.{key}", "FieldValueRequired", "Required value")
            return False
        return True

    def object(self, value: Any, field: str) -> dict:
        return value if self.typed(value, field, "object") else {}

    def array(self, value: Any, field: str, max_items: int, min_items: int = 0) -> list:
        if not self.typed(value, field, "array"):
            return []
        if len(value) > max_items:
            self.add(field, "FieldValueTooMany",
                     f"Too many: {len(value)}: must have at most {max_items} items")
        elif len(value) < min_items:
            self.add(field, "FieldValueInvalid", f"Invalid value: {len(value)}: {field} in "
                     f"body should have at least {min_items} items")
        return value

    def integer(self, value: Any, field: str, low: int, high: int | None = None) -> int | None:
        if not self.typed(value, field, "integer"):
            return None
        if value < low:
            self.add(field, "FieldValueInvalid", f"Invalid value: {value}: {field} in body "
                     f"should be greater than or equal to {low}")
        elif high is not None and value > high:
            self.add(field, "FieldValueInvalid", f"Invalid value: {value}: {field} in body "
                     f"should be less than or equal to {high}")
        else:
            return value
        return None

    def string(self, value: Any, field: str, *, pattern: re.Pattern | None = None,
               max_length: int | None = None, min_length: int = 0,
               enum: tuple[str, ...] | None = None) -> str | None:
        if not self.typed(value, field, "string"):
            return None
        if enum is not None and value not in enum:
            supported = ", ".join(f'"{e}"' for e in enum)
            self.add(field, "FieldValueNotSupported",
                     f"Unsupported value: {json.dumps(value)}: supported values: {supported}")
        elif max_length is not None and len(value) > max_length:
            self.add(field, "FieldValueTooLong", f"Too long: may not be more than {max_length} "
                     "bytes")
        elif len(value) < min_length:
            self.add(field, "FieldValueInvalid", f"Invalid value: {json.dumps(value)}: {field} "
                     f"in body should be at least {min_length} chars long")
        elif pattern is not None and not pattern.fullmatch(value):
            self.add(field, "FieldValueInvalid", f"Invalid value: {json.dumps(value)}: {field} "
                     f"in body should match '^{pattern.pattern}$'")
        else:
            return value
        return None


def gateway_api_causes(res: Resource, obj: dict) -> list[dict]:
    """The Gateway API CRDs' schema checks for HTTPRoute, GRPCRoute and Gateway."""
    check = _Schema()
    if obj.get("spec") is None:
        check.add("spec", "FieldValueRequired", "Required value")
        return check.causes
    spec = check.object(obj.get("spec"), "spec")
    if res.kind == "Gateway":
        _gateway_spec(check, spec)
        return check.causes
    grpc = res.kind == "GRPCRoute"
    for i, ref in enumerate(check.array(spec.get("parentRefs"), "spec.parentRefs", 32)):
        _parent_ref(check, ref, f"spec.parentRefs[{i}]")
    for i, host in enumerate(check.array(spec.get("hostnames"), "spec.hostnames", 16)):
        check.string(host, f"spec.hostnames[{i}]", pattern=_HOSTNAME, max_length=253,
                     min_length=1)
    rules = check.array(spec.get("rules"), "spec.rules", 16, min_items=0 if grpc else 1)
    matches = 0
    for i, rule in enumerate(rules):
        where = f"spec.rules[{i}]"
        rule = check.object(rule, where)
        matches += len(rule.get("matches") or []) if isinstance(rule.get("matches"), list) else 0
        if rule.get("name") is not None:
            check.string(rule["name"], f"{where}.name", pattern=_SUBDOMAIN, max_length=253,
                         min_length=1)
        for k, match in enumerate(check.array(rule.get("matches"), f"{where}.matches", 64)):
            (_grpc_match if grpc else _http_match)(check, match, f"{where}.matches[{k}]")
        filters = GRPC_FILTERS if grpc else HTTP_FILTERS
        _filters(check, rule.get("filters"), f"{where}.filters", filters)
        for j, ref in enumerate(check.array(rule.get("backendRefs"), f"{where}.backendRefs",
                                            16)):
            ref_where = f"{where}.backendRefs[{j}]"
            ref = _backend_ref(check, ref, ref_where)
            check.integer(ref.get("weight"), f"{ref_where}.weight", 0, 1_000_000)
            _filters(check, ref.get("filters"), f"{ref_where}.filters", filters)
        if not grpc and rule.get("timeouts") is not None:
            _timeouts(check, rule["timeouts"], f"{where}.timeouts")
        if not grpc and isinstance(rule.get("backendRefs"), list) and rule["backendRefs"] and \
                any(isinstance(f, dict) and f.get("requestRedirect") is not None
                    for f in rule.get("filters") or []):
            check.cel(where, "RequestRedirect filter must not be used together with backendRefs")
    if matches > 128:
        check.cel("spec.rules", "While 16 rules and 64 matches per rule are allowed, the total "
                  "number of matches across all rules in a route must be less than 128")
    return check.causes


def _parent_ref(check: _Schema, ref: Any, where: str) -> None:
    ref = check.object(ref, where)
    if check.required(ref, "name", where):
        check.string(ref["name"], f"{where}.name", max_length=253, min_length=1)
    if ref.get("group") is not None:
        check.string(ref["group"], f"{where}.group", pattern=_GROUP, max_length=253)
    if ref.get("kind") is not None:
        check.string(ref["kind"], f"{where}.kind", pattern=_KIND, max_length=63, min_length=1)
    if ref.get("namespace") is not None:
        check.string(ref["namespace"], f"{where}.namespace", pattern=_LABEL, max_length=63,
                     min_length=1)
    if ref.get("sectionName") is not None:
        check.string(ref["sectionName"], f"{where}.sectionName", pattern=_SUBDOMAIN,
                     max_length=253, min_length=1)
    if ref.get("port") is not None:
        check.integer(ref["port"], f"{where}.port", 1, 65535)


def _backend_ref(check: _Schema, ref: Any, where: str) -> dict:
    """A BackendObjectReference: name required; a port when it names a core Service."""
    ref = check.object(ref, where)
    if check.required(ref, "name", where):
        check.string(ref["name"], f"{where}.name", max_length=253, min_length=1)
    group = ref.get("group", "")
    kind = ref.get("kind", "Service")
    if group != "":
        check.string(group, f"{where}.group", pattern=_GROUP, max_length=253)
    if kind != "Service":
        check.string(kind, f"{where}.kind", pattern=_KIND, max_length=63, min_length=1)
    if ref.get("namespace") is not None:
        check.string(ref["namespace"], f"{where}.namespace", pattern=_LABEL, max_length=63,
                     min_length=1)
    if ref.get("port") is not None:
        check.integer(ref["port"], f"{where}.port", 1, 65535)
    elif group == "" and kind == "Service":
        check.cel(where, "Must have port for Service reference")
    return ref


def _http_match(check: _Schema, match: Any, where: str) -> None:
    match = check.object(match, where)
    path = match.get("path")
    if path is not None:
        path = check.object(path, f"{where}.path")
        kind = check.string(path.get("type", "PathPrefix"), f"{where}.path.type",
                            enum=("Exact", "PathPrefix", "RegularExpression"))
        value = check.string(path.get("value", "/"), f"{where}.path.value", max_length=1024)
        if kind in ("Exact", "PathPrefix") and value is not None:
            if not value.startswith("/"):
                check.cel(f"{where}.path", "value must be an absolute path and start with '/' "
                          "when type one of ['Exact', 'PathPrefix']")
            elif any(bad in value for bad in ("//", "/./", "/../", "%2f", "%2F", "#")) or \
                    value.endswith(("/..", "/.")):
                check.cel(f"{where}.path", "must not contain '//', '/./', '/../', '%2f', '%2F' "
                          "or '#', nor end with '/..' or '/.', when type one of ['Exact', "
                          "'PathPrefix']")
            elif not _PATH_CHARS.fullmatch(value):
                check.cel(f"{where}.path", "must only contain valid characters (matching "
                          "^(?:[-A-Za-z0-9/._~!$&'()*+,;=:@]|[%][0-9a-fA-F]{2})+$) for types "
                          "['Exact', 'PathPrefix']")
    _name_value_matches(check, match.get("headers"), f"{where}.headers", 4096)
    _name_value_matches(check, match.get("queryParams"), f"{where}.queryParams", 1024)
    if match.get("method") is not None:
        check.string(match["method"], f"{where}.method", enum=HTTP_METHODS)


def _grpc_match(check: _Schema, match: Any, where: str) -> None:
    match = check.object(match, where)
    _name_value_matches(check, match.get("headers"), f"{where}.headers", 4096)
    method = match.get("method")
    if method is not None:
        method = check.object(method, f"{where}.method")
        check.string(method.get("type", "Exact"), f"{where}.method.type",
                     enum=("Exact", "RegularExpression"))
        if method.get("service") is None and method.get("method") is None:
            check.cel(f"{where}.method", "One or both of 'service' or 'method' must be "
                      "specified")


def _name_value_matches(check: _Schema, items: Any, where: str, max_value: int) -> None:
    seen: set[str] = set()
    for i, item in enumerate(check.array(items, where, 16)):
        item_where = f"{where}[{i}]"
        item = check.object(item, item_where)
        if check.required(item, "name", item_where):
            name = check.string(item["name"], f"{item_where}.name", pattern=_HEADER_NAME,
                                max_length=256, min_length=1)
            if name is not None and name in seen:
                check.add(f"{item_where}", "FieldValueDuplicate",
                          f'Duplicate value: {{"name":{json.dumps(name)}}}')
            seen.add(name or "")
        if check.required(item, "value", item_where):
            check.string(item["value"], f"{item_where}.value", max_length=max_value,
                         min_length=1)
        check.string(item.get("type", "Exact"), f"{item_where}.type",
                     enum=("Exact", "RegularExpression"))


def _filters(check: _Schema, filters: Any, where: str, allowed: tuple[str, ...]) -> None:
    kinds = []
    for i, item in enumerate(check.array(filters, where, 16)):
        item_where = f"{where}[{i}]"
        item = check.object(item, item_where)
        if not check.required(item, "type", item_where):
            continue
        kind = check.string(item["type"], f"{item_where}.type", enum=allowed)
        if kind is None:
            continue
        kinds.append(kind)
        for other, key in _FILTER_FIELDS.items():
            if other != kind and item.get(key) is not None:
                check.cel(item_where, f"filter.{key} must be nil if the filter.type is not "
                          f"{other}")
        key = _FILTER_FIELDS[kind]
        if item.get(key) is None:
            check.cel(item_where, f"filter.{key} must be specified for {kind} filter.type")
        elif kind == "RequestMirror":
            _request_mirror(check, item[key], f"{item_where}.requestMirror")
    for kind in _ONCE_FILTERS:
        if kinds.count(kind) > 1:
            check.cel(where, f"{kind} filter cannot be repeated")
    if "RequestRedirect" in kinds and "URLRewrite" in kinds:
        check.cel(where, "May specify either httpRouteFilterRequestRedirect or "
                  "httpRouteFilterRequestRewrite, but not both")


def _request_mirror(check: _Schema, mirror: Any, where: str) -> None:
    mirror = check.object(mirror, where)
    if check.required(mirror, "backendRef", where):
        _backend_ref(check, mirror["backendRef"], f"{where}.backendRef")
    if mirror.get("percent") is not None:
        check.integer(mirror["percent"], f"{where}.percent", 0, 100)
    if mirror.get("fraction") is not None:
        fraction = check.object(mirror["fraction"], f"{where}.fraction")
        numerator = None
        if check.required(fraction, "numerator", f"{where}.fraction"):
            numerator = check.integer(fraction["numerator"], f"{where}.fraction.numerator", 0)
        denominator = check.integer(fraction.get("denominator", 100),
                                    f"{where}.fraction.denominator", 1)
        if numerator is not None and denominator is not None and numerator > denominator:
            check.cel(f"{where}.fraction", "numerator must be less than or equal to "
                      "denominator")
    if mirror.get("percent") is not None and mirror.get("fraction") is not None:
        check.cel(where, "Only one of percent or fraction may be specified in "
                  "HTTPRequestMirrorFilter")


def _timeouts(check: _Schema, timeouts: Any, where: str) -> None:
    timeouts = check.object(timeouts, where)
    seconds = {}
    for key in ("request", "backendRequest"):
        if timeouts.get(key) is not None:
            text = check.string(timeouts[key], f"{where}.{key}", pattern=GATEWAY_DURATION)
            if text is not None:
                seconds[key] = gateway_duration_seconds(text)
    if seconds.get("request") and seconds.get("backendRequest", 0) > seconds["request"]:
        check.cel(where, "backendRequest timeout cannot be longer than request timeout")


def _gateway_spec(check: _Schema, spec: dict) -> None:
    if check.required(spec, "gatewayClassName", "spec"):
        check.string(spec["gatewayClassName"], "spec.gatewayClassName", max_length=253,
                     min_length=1)
    if spec.get("listeners") is None:
        check.add("spec.listeners", "FieldValueRequired", "Required value")
    names: set[str] = set()
    for i, listener in enumerate(check.array(spec.get("listeners"), "spec.listeners", 64,
                                             min_items=1)):
        where = f"spec.listeners[{i}]"
        listener = check.object(listener, where)
        if check.required(listener, "name", where):
            name = check.string(listener["name"], f"{where}.name", pattern=_SUBDOMAIN,
                                max_length=253, min_length=1)
            if name is not None and name in names:
                check.add(where, "FieldValueDuplicate",
                          f'Duplicate value: {{"name":{json.dumps(name)}}}')
            names.add(name or "")
        if check.required(listener, "port", where):
            check.integer(listener["port"], f"{where}.port", 1, 65535)
        if check.required(listener, "protocol", where):
            check.string(listener["protocol"], f"{where}.protocol", max_length=255,
                         min_length=1)
        if listener.get("hostname") is not None:
            check.string(listener["hostname"], f"{where}.hostname", pattern=_HOSTNAME,
                         max_length=253, min_length=1)


def gateway_api_defaults(res: Resource, spec: dict) -> None:
    """The defaults the Gateway API CRDs declare, filled in as the API server fills them."""
    if res.kind == "Gateway":
        return
    for ref in spec.get("parentRefs") or []:
        if isinstance(ref, dict):
            ref.setdefault("group", GATEWAY_GROUP)
            ref.setdefault("kind", "Gateway")
    if res.kind == "HTTPRoute" and "rules" not in spec:
        spec["rules"] = [{}]
    for rule in spec.get("rules") or []:
        if not isinstance(rule, dict):
            continue
        if res.kind == "HTTPRoute":
            if "matches" not in rule:
                rule["matches"] = [{}]
            for match in rule.get("matches") or []:
                if not isinstance(match, dict):
                    continue
                path = match.setdefault("path", {})
                if isinstance(path, dict):
                    path.setdefault("type", "PathPrefix")
                    path.setdefault("value", "/")
                for item in (match.get("headers") or []) + (match.get("queryParams") or []):
                    if isinstance(item, dict):
                        item.setdefault("type", "Exact")
        else:
            for match in rule.get("matches") or []:
                if isinstance(match, dict):
                    for item in match.get("headers") or []:
                        if isinstance(item, dict):
                            item.setdefault("type", "Exact")
                    if isinstance(match.get("method"), dict):
                        match["method"].setdefault("type", "Exact")
        refs = rule.get("backendRefs") or []
        for ref in refs:
            if isinstance(ref, dict):
                _default_backend_ref(ref)
                ref.setdefault("weight", 1)
        for item in (rule.get("filters") or []) + [
                f for ref in refs if isinstance(ref, dict) for f in ref.get("filters") or []]:
            if not isinstance(item, dict):
                continue
            mirror = item.get("requestMirror")
            if isinstance(mirror, dict):
                if isinstance(mirror.get("backendRef"), dict):
                    _default_backend_ref(mirror["backendRef"])
                if isinstance(mirror.get("fraction"), dict):
                    mirror["fraction"].setdefault("denominator", 100)
            redirect = item.get("requestRedirect")
            if isinstance(redirect, dict):
                redirect.setdefault("statusCode", 302)


def _default_backend_ref(ref: dict) -> None:
    ref.setdefault("group", "")
    ref.setdefault("kind", "Service")


def admission(res: Resource, obj: dict) -> list[str]:
    """canarykit's validator as a validating webhook: raises 422 on errors, returns warnings.

    It sees the custom resources, Istio's and the Gateway API's (`validate_object` answers
    nothing for the kinds it does not check).

    Imported lazily so the server starts fast; a missing validator fails the request loudly
    (a webhook that cannot run rejects, it never waves objects through).
    """
    if not res.is_custom:
        return []
    from canarykit.mesh import validate

    messages = validate.validate_object(obj)
    errors = [m for m in messages if m.level == "Error"]
    if errors:
        causes = [webhook_cause(m) for m in errors]
        raise invalid(res, obj["metadata"]["name"], causes)
    return [m.format() for m in messages if m.level == "Warning"]


def webhook_cause(message: Any) -> dict:
    """A validator message as a Status cause, its leading `field.path: ` as the cause's field."""
    m = re.fullmatch(r"([A-Za-z][\w.\[\]-]*): (.+)", message.message, re.S)
    if m is None:
        return {"reason": message.code, "message": message.format()}
    return {"reason": message.code, "message": f"[{message.code}] {m[2]}", "field": m[1]}


# ---------------------------------------------------------------- selectors


_LABEL_REQ = re.compile(
    r"\s*(?:(?P<not>!)\s*(?P<absent>[\w./-]+)|(?P<key>[\w./-]+)\s*"
    r"(?:(?P<op>==|!=|=)\s*(?P<value>[\w.-]*)|\s+(?P<set>in|notin)\s*\((?P<values>[^)]*)\))?)\s*")


def parse_label_selector(text: str) -> list[tuple[str, str, set[str]]]:
    """Equality, set-based and existence requirements as (key, op, values)."""
    reqs = []
    for part in re.split(r",(?![^(]*\))", text or ""):
        if not part.strip():
            continue
        m = _LABEL_REQ.fullmatch(part)
        if not m:
            raise bad_request(f"unable to parse requirement: invalid label selector {text!r}")
        if m["absent"]:
            reqs.append((m["absent"], "!", set()))
        elif m["op"]:
            reqs.append((m["key"], "!=" if m["op"] == "!=" else "=", {m["value"]}))
        elif m["set"]:
            reqs.append((m["key"], m["set"], {v.strip() for v in m["values"].split(",")}))
        else:
            reqs.append((m["key"], "exists", set()))
    return reqs


def labels_match(reqs: list[tuple[str, str, set[str]]], labels: dict) -> bool:
    for key, op, values in reqs:
        have = labels.get(key)
        ok = {"=": have in values, "in": have in values, "!=": have not in values,
              "notin": have not in values, "exists": key in labels, "!": key not in labels}[op]
        if not ok:
            return False
    return True


def parse_field_selector(text: str) -> list[tuple[str, bool, str]]:
    """`metadata.name=x` / `metadata.namespace!=y` requirements as (field, equal, value)."""
    reqs = []
    for part in filter(None, (p.strip() for p in (text or "").split(","))):
        m = re.fullmatch(r"([\w.]+)\s*(==|=|!=)\s*(.*)", part)
        if not m:
            raise bad_request(f"invalid field selector: {part!r}")
        if m[1] not in ("metadata.name", "metadata.namespace"):
            raise bad_request(f'"{m[1]}" is not a known field selector: only "metadata.name", '
                              '"metadata.namespace"')
        reqs.append((m[1].split(".")[1], m[2] != "!=", m[3]))
    return reqs


def selected(obj: dict, labels: list, fields: list) -> bool:
    meta = obj.get("metadata") or {}
    if not labels_match(labels, meta.get("labels") or {}):
        return False
    return all((meta.get(key, "") == value) == equal for key, equal, value in fields)


# ---------------------------------------------------------------- the store


@dataclass
class Event:
    rv: int
    type: str
    res: Resource
    obj: dict
    old: dict | None = None


def _fsync_directory(path: Path) -> None:
    """A new file or a rename is durable only once its directory is synced too."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _object_key(group: str, plural: str, obj: dict) -> tuple[str, str, str, str]:
    meta = obj["metadata"]
    return group, plural, meta.get("namespace", ""), meta["name"]


class Journal:
    """The changes since the last snapshot, one JSON line each, each fsynced before it is served.

    A failed append is cut off again; if even that fails the journal is `broken` and the store
    writes a snapshot before the next append, so a change answered with 500 is never replayed
    behind later ones. (Should the process die before that, the failed change may come back on
    restart, as a change whose etcd write timed out may: a 500 means the outcome is unknown.)
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: int | None = None
        self.size = 0
        self.broken = False

    def open(self) -> None:
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self.size = os.fstat(self.fd).st_size

    def append(self, record: dict) -> None:
        if self.fd is None:
            raise OSError("the store is closed")
        line = json.dumps(record, separators=(",", ":"), sort_keys=True).encode() + b"\n"
        try:
            view = memoryview(line)
            while view:
                view = view[os.write(self.fd, view):]
            os.fsync(self.fd)
        except OSError:
            try:
                self.truncate(self.size)
            except OSError:
                pass  # now broken: the store writes a snapshot before the next append
            raise
        self.size += len(line)

    def truncate(self, size: int) -> None:
        """Cut the journal back to `size` bytes, durably; on failure mark it broken."""
        if self.fd is None:
            raise OSError("the store is closed")
        try:
            os.ftruncate(self.fd, size)
            os.fsync(self.fd)
        except OSError:
            self.broken = True
            raise
        self.size, self.broken = size, False

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def read_journal(path: Path, after: int) -> list[dict]:
    """The journal's records newer than `after` (older ones are already in the snapshot).

    A torn last line is a write that was never acknowledged (the process died inside it) and
    is dropped; a damaged line before it is corruption and stops the server from starting.
    """
    if not path.exists():
        return []
    *lines, _torn = path.read_bytes().split(b"\n")
    records, last = [], after
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
            rv = int(record["rv"])
            _object_key(record["group"], record["plural"], record["object"])
        except (ValueError, KeyError, TypeError) as err:
            raise RuntimeError(f"{path}: line {number} is damaged ({err!r}); move the file "
                               "away to start from the snapshot alone") from err
        if rv <= after:
            continue
        if rv <= last:
            raise RuntimeError(f"{path}: line {number} repeats resourceVersion {rv}")
        records.append(record)
        last = rv
    return records


class Store:
    """Objects in memory under one global resourceVersion counter, persisted in `data_dir` as a
    snapshot (`state.json`) plus a journal of the changes since (`journal.jsonl`).

    A change is appended to the journal and fsynced before it is applied in memory and answered,
    so a failed save changes nothing that is served, and a write costs one journal line, not a
    rewrite of the whole state. The journal is folded into a new snapshot at startup and once it
    outgrows the snapshot (and COMPACT_MIN_BYTES), so compaction stays a bounded share of the
    writing. `issued` is the highest resourceVersion ever handed to the disk, kept in the
    snapshot, so no value is reused, not even one whose save failed. `cond` guards every
    read-modify-write, so of two writers sending the same resourceVersion exactly one wins;
    watchers wait on it for new events.
    """

    def __init__(self, data_dir: Path, token: str | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.path = self.data_dir / SNAPSHOT_FILE
        self.journal = Journal(self.data_dir / JOURNAL_FILE)
        self.cond = threading.Condition(threading.RLock())
        self.objects: dict[tuple[str, str, str, str], dict] = {}
        self.rv = 0
        self.issued = 0
        self.snapshot_bytes = 0
        self.stopping = False
        self.events: deque[Event] = deque()
        stored_token = self.load()
        self.token = token or stored_token or secrets.token_urlsafe(32)
        self.history_floor = self.rv
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.journal.open()
        self.compact()  # a restart replays at most one journal, and the token given is kept
        if ("", "namespaces", "", "default") not in self.objects:
            self.put(NAMESPACES, {"apiVersion": "v1", "kind": "Namespace",
                                  "metadata": {"name": "default"}}, "ADDED", None)

    def load(self) -> str | None:
        """The snapshot, then the journal's newer changes; returns the stored token."""
        token = None
        if self.path.exists():
            state = json.loads(self.path.read_text())
            self.rv = int(state["resourceVersion"])
            token = state.get("token")
            for group, plural, obj in state["objects"]:
                self.objects[_object_key(group, plural, obj)] = obj
        for record in read_journal(self.journal.path, self.rv):
            key = _object_key(record["group"], record["plural"], record["object"])
            if record["type"] == "DELETED":
                self.objects.pop(key, None)
            else:
                self.objects[key] = record["object"]
            self.rv = int(record["rv"])
        self.issued = self.rv
        return token

    def compact(self) -> None:
        """Write the whole state as the new snapshot, then empty the journal. Its records are
        all at or below the snapshot's resourceVersion, so a crash in between replays none."""
        objects = [[g, p, obj] for (g, p, _, _), obj in sorted(self.objects.items())]
        state = {"resourceVersion": self.issued, "token": self.token, "objects": objects}
        text = json.dumps(state, separators=(",", ":"), sort_keys=True)
        write_atomically(self.path, text, fsync=True)
        _fsync_directory(self.data_dir)
        self.snapshot_bytes = len(text)
        self.journal.truncate(0)

    def get(self, res: Resource, namespace: str, name: str) -> dict | None:
        return self.objects.get((res.group, res.plural, namespace, name))

    def list(self, res: Resource, namespace: str | None) -> list[dict]:
        return [obj for (g, p, ns, _), obj in sorted(self.objects.items())
                if (g, p) == (res.group, res.plural) and namespace in (None, ns)]

    def put(self, res: Resource, obj: dict, event: str, old: dict | None) -> dict:
        """Save a change under a new resourceVersion, then serve it: apply it, record the event,
        wake watchers. If saving fails this raises a 500 Status and nothing is applied."""
        with self.cond:
            rv = self.issued + 1
            obj = copy.deepcopy(obj)
            obj["apiVersion"] = res.api_version(res.versions[0])
            meta = obj["metadata"]
            meta["resourceVersion"] = str(rv)
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", times.timestamp())
            meta.setdefault("generation", 1)
            self.save({"rv": rv, "type": event, "group": res.group, "plural": res.plural,
                       "object": obj})
            key = _object_key(res.group, res.plural, obj)
            if event == "DELETED":
                del self.objects[key]
            else:
                self.objects[key] = obj
            self.rv = rv
            self.events.append(Event(rv, event, res, obj, old))
            while len(self.events) > EVENT_HISTORY:
                self.history_floor = self.events.popleft().rv
            self.cond.notify_all()
            self.compact_if_due()
            return copy.deepcopy(obj)

    def save(self, record: dict) -> None:
        """Append the record durably, or raise a 500 Status; its resourceVersion is spent
        either way, since part of it may be on the disk."""
        try:
            if self.journal.broken:
                self.compact()
            self.issued = record["rv"]
            self.journal.append(record)
        except OSError as err:
            sys.stderr.write(f"apiserver: could not save resourceVersion {record['rv']}: "
                             f"{err}\n")
            raise cannot_save(err) from err

    def compact_if_due(self) -> None:
        """Fold the journal in once it outgrows the snapshot: amortised, a write then costs a
        bounded multiple of its own size. A failure here loses nothing (the journal stays)."""
        if self.journal.size <= max(COMPACT_MIN_BYTES, self.snapshot_bytes):
            return
        try:
            self.compact()
        except OSError as err:
            sys.stderr.write(f"apiserver: could not compact the journal (kept): {err}\n")

    def stop(self) -> None:
        with self.cond:
            self.stopping = True
            self.journal.close()
            self.cond.notify_all()


def render(obj: dict, res: Resource, version: str) -> dict:
    """The stored object as seen through `version` of its API (the versions of an Istio or
    Gateway API kind share one schema)."""
    out = copy.deepcopy(obj)
    out["apiVersion"] = res.api_version(version)
    out["kind"] = res.kind
    return out


def spec_changed(old: dict, new: dict) -> bool:
    ignored = ("metadata", "status", "apiVersion", "kind")
    return ({k: v for k, v in old.items() if k not in ignored}
            != {k: v for k, v in new.items() if k not in ignored})


def apply_defaults(res: Resource, obj: dict) -> None:
    """The few defaults a real API server fills in that clients commonly read back."""
    spec = obj.get("spec")
    if res.plural == "deployments" and isinstance(spec, dict):
        spec.setdefault("replicas", 1)
    if res.plural == "services" and isinstance(spec, dict):
        spec.setdefault("type", "ClusterIP")
        for port in spec.get("ports") or []:
            if isinstance(port, dict):
                port.setdefault("protocol", "TCP")
                port.setdefault("targetPort", port.get("port"))
    if res.plural == "namespaces":
        obj["status"] = {"phase": "Active"}
    if res.is_gateway_api and isinstance(spec, dict):
        gateway_api_defaults(res, spec)


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


# ---------------------------------------------------------------- the operations


@dataclass
class Target:
    """What a request URL names: a resource at a version, maybe a namespace and a name."""

    res: Resource
    version: str
    namespace: str | None
    name: str | None


class Api:
    """The REST verbs over a Store; each returns (status code, body, warnings)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def _check_body(self, t: Target, body: Any, name: str | None) -> dict:
        if not isinstance(body, dict):
            raise bad_request("the body of the request must be a JSON object")
        want_version = t.res.api_version(t.version)
        if t.res.is_custom and ("kind" not in body or "apiVersion" not in body):
            raise bad_request(f"Object 'Kind' or 'apiVersion' is missing in {json.dumps(body)}")
        if body.setdefault("apiVersion", want_version) != want_version:
            raise bad_request(f"the API version in the data ({body['apiVersion']}) does not "
                              f"match the expected API version ({want_version})")
        if body.setdefault("kind", t.res.kind) != t.res.kind:
            raise bad_request(f"the kind in the data ({body['kind']}) does not match the "
                              f"expected kind ({t.res.kind})")
        meta = body.get("metadata")
        if meta is None:
            meta = body["metadata"] = {}
        if not isinstance(meta, dict):
            raise bad_request("metadata must be a JSON object")
        if t.res.namespaced:
            if meta.setdefault("namespace", t.namespace) != t.namespace:
                raise bad_request("the namespace of the provided object does not match the "
                                  "namespace sent on the request")
        else:
            meta.pop("namespace", None)
        if name is not None and meta.get("name") != name:
            raise bad_request(f"the name of the object ({meta.get('name')}) does not match the "
                              f"name on the URL ({name})")
        return body

    def _validate(self, t: Target, obj: dict) -> list[str]:
        causes = schema_causes(t.res, obj)
        if causes:
            raise invalid(t.res, str(obj["metadata"].get("name", "")), causes)
        return admission(t.res, obj)

    def _current(self, t: Target) -> dict:
        obj = self.store.get(t.res, t.namespace or "", t.name)
        if obj is None:
            raise not_found(t.res, t.name)
        return obj

    def get(self, t: Target) -> tuple[int, dict, list[str]]:
        return 200, render(self._current(t), t.res, t.version), []

    def list(self, t: Target, query: dict) -> tuple[int, dict, list[str]]:
        labels = parse_label_selector(query.get("labelSelector", ""))
        fields = parse_field_selector(query.get("fieldSelector", ""))
        with self.store.cond:
            items = [render(o, t.res, t.version) for o in self.store.list(t.res, t.namespace)
                     if selected(o, labels, fields)]
            rv = str(self.store.rv)
        return 200, {"apiVersion": t.res.api_version(t.version), "kind": f"{t.res.kind}List",
                     "metadata": {"resourceVersion": rv}, "items": items}, []

    def create(self, t: Target, body: Any, dry_run: bool) -> tuple[int, dict, list[str]]:
        obj = self._check_body(t, body, None)
        meta = obj["metadata"]
        if meta.get("resourceVersion"):
            raise bad_request("resourceVersion should not be set on objects to be created")
        for system_field in ("uid", "creationTimestamp", "generation", "deletionTimestamp"):
            meta.pop(system_field, None)
        if not meta.get("name") and meta.get("generateName"):
            alphabet = "bcdfghjklmnpqrstvwxz2456789"
            meta["name"] = meta["generateName"] + "".join(secrets.choice(alphabet)
                                                          for _ in range(5))
        apply_defaults(t.res, obj)
        with self.store.cond:
            if t.res.namespaced and not self.store.get(NAMESPACES, "", t.namespace):
                raise not_found(NAMESPACES, t.namespace)
            warnings = self._validate(t, obj)
            if self.store.get(t.res, t.namespace or "", meta["name"]) is not None:
                raise ApiError(409, "AlreadyExists", f'{t.res.qualified} "{meta["name"]}" '
                               "already exists", _details(t.res, meta["name"]))
            if dry_run:
                meta.update(uid=str(uuid.uuid4()), creationTimestamp=times.timestamp(),
                            generation=1)
                return 201, obj, warnings
            stored = self.store.put(t.res, obj, "ADDED", None)
        return 201, render(stored, t.res, t.version), warnings

    def replace(self, t: Target, body: Any, dry_run: bool) -> tuple[int, dict, list[str]]:
        obj = self._check_body(t, body, t.name)
        with self.store.cond:
            return self._update(t, obj, self._current(t), dry_run)

    def patch(self, t: Target, body: bytes, content_type: str,
              dry_run: bool) -> tuple[int, dict, list[str]]:
        kind = content_type.split(";")[0].strip().lower()
        merge_kinds = ["application/merge-patch+json"]
        if not t.res.is_custom:
            merge_kinds.append("application/strategic-merge-patch+json")
        if kind not in merge_kinds and kind != "application/json-patch+json":
            raise unsupported_media_type(kind)
        patch = parse_json(body)
        with self.store.cond:
            current = render(self._current(t), t.res, t.version)
            if kind == "application/json-patch+json":
                if not isinstance(patch, list) or not all(isinstance(op, dict) for op in patch):
                    raise bad_request("a JSON patch must be a list of operation objects")
                try:
                    patched = jsonpatch.JsonPatch(patch).apply(current)
                except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException,
                        KeyError, TypeError, ValueError) as err:
                    raise ApiError(422, "Invalid", "the server rejected our request due to an "
                                   "error in our request", {"causes": [{
                                       "reason": "UnexpectedServerResponse",
                                       "message": str(err)}]}) from err
            else:
                patched = merge_patch(current, patch)
            obj = self._check_body(t, patched, t.name)
            return self._update(t, obj, self._current(t), dry_run)

    def _update(self, t: Target, obj: dict, old: dict,
                dry_run: bool) -> tuple[int, dict, list[str]]:
        meta, old_meta = obj["metadata"], old["metadata"]
        if meta.get("resourceVersion") not in (None, "", old_meta["resourceVersion"]):
            raise stale(t.res, t.name)
        if meta.get("uid") not in (None, "", old_meta["uid"]):
            raise conflict(t.res, t.name, f"Precondition failed: UID in precondition: "
                           f"{meta['uid']}, UID in object meta: {old_meta['uid']}")
        for kept in ("uid", "creationTimestamp", "resourceVersion"):
            meta[kept] = old_meta[kept]
        meta["generation"] = old_meta.get("generation", 1) + int(spec_changed(old, obj))
        apply_defaults(t.res, obj)
        warnings = self._validate(t, obj)
        if render(old, t.res, t.version) == obj or dry_run:
            return 200, obj, warnings
        stored = self.store.put(t.res, obj, "MODIFIED", old)
        return 200, render(stored, t.res, t.version), warnings

    def delete(self, t: Target, body: Any, dry_run: bool) -> tuple[int, dict, list[str]]:
        options = body if isinstance(body, dict) else {}
        dry_run = dry_run or check_dry_run(options.get("dryRun"))
        preconditions = options.get("preconditions") or {}
        with self.store.cond:
            old = self._current(t)
            for key in ("resourceVersion", "uid"):
                want = preconditions.get(key)
                if want and want != old["metadata"][key]:
                    raise conflict(t.res, t.name, f"Precondition failed: {key} in precondition: "
                                   f"{want}, {key} in object meta: {old['metadata'][key]}")
            gone = old if dry_run else self.store.put(t.res, old, "DELETED", None)
        if t.res.returns_deleted_object:
            return 200, render(gone, t.res, t.version), []
        return 200, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                     "details": {**_details(t.res, t.name), "uid": old["metadata"]["uid"]}}, []


def self_subject_review(t: Target, user: User) -> dict:
    return {"apiVersion": t.res.api_version(t.version), "kind": "SelfSubjectReview",
            "metadata": {"creationTimestamp": times.timestamp()},
            "status": {"userInfo": {"username": user.name, "groups": list(user.groups)}}}


# ---------------------------------------------------------------- who asks, and may they


@dataclass(frozen=True)
class User:
    name: str
    groups: tuple[str, ...]
    namespace: str = ""  # a service account's own namespace

    @property
    def is_admin(self) -> bool:
        return "system:masters" in self.groups


ADMIN = User(USER, tuple(GROUPS))


def service_account_token(secret: str, namespace: str, name: str) -> str:
    """A token for a service account, as the TokenRequest API issues it (an HMAC over the
    account with the server's own token as key, so checking it needs no stored state)."""
    mac = hmac.new(secret.encode(), f"{namespace}/{name}".encode(), hashlib.sha256).hexdigest()
    return f"{TOKEN_PREFIX}{namespace}.{name}.{mac}"


def user_for_token(secret: str, token: str) -> User | None:
    if secrets.compare_digest(token.encode(), secret.encode()):
        return ADMIN
    parts = token.split(".")
    if len(parts) != 4 or f"{parts[0]}." != TOKEN_PREFIX:
        return None
    _, namespace, name, _ = parts
    if not secrets.compare_digest(token.encode(),
                                  service_account_token(secret, namespace, name).encode()):
        return None
    return User(f"{SERVICE_ACCOUNT_PREFIX}{namespace}:{name}",
                ("system:serviceaccounts", f"system:serviceaccounts:{namespace}",
                 "system:authenticated"), namespace)


def rule_allows(rule: Any, group: str, plural: str, verb: str, name: str | None) -> bool:
    """One PolicyRule, with Kubernetes' semantics: `*` matches all; resourceNames limit the
    rule to requests naming one of them (never list, watch or create)."""
    if not isinstance(rule, dict):
        return False

    def has(key: str, value: str) -> bool:
        values = rule.get(key) or []
        return isinstance(values, list) and ("*" in values or value in values)

    names_ = rule.get("resourceNames") or []
    return (has("apiGroups", group) and has("resources", plural) and has("verbs", verb)
            and (not names_ or (name is not None and name in names_)))


def authorized(store: Store, user: User, t: Target, verb: str) -> bool:
    """RBAC for service accounts: the Roles bound to them in the request's namespace (every
    authenticated user may ask who it is, as Kubernetes' system:basic-user grants)."""
    if user.is_admin or t.res.plural == "selfsubjectreviews":
        return True
    if t.namespace is None:
        return False  # no ClusterRoles here: nothing cluster-wide for service accounts
    bindings = store.list(find_resource("rbac.authorization.k8s.io", "v1", "rolebindings"),
                          t.namespace)
    roles = find_resource("rbac.authorization.k8s.io", "v1", "roles")
    for binding in bindings:
        subjects = binding.get("subjects") or []
        bound = any(isinstance(s, dict) and s.get("kind") == "ServiceAccount"
                    and f"{SERVICE_ACCOUNT_PREFIX}{s.get('namespace') or t.namespace}:"
                        f"{s.get('name')}" == user.name for s in subjects)
        ref = binding.get("roleRef") or {}
        if not bound or ref.get("kind") != "Role":
            continue
        role = store.get(roles, t.namespace, str(ref.get("name")))
        if role and any(rule_allows(rule, t.res.group, t.res.plural, verb, t.name)
                        for rule in role.get("rules") or []):
            return True
    return False


def forbidden(user: User, t: Target, verb: str) -> ApiError:
    """403 in Kubernetes' words."""
    what = f"{t.res.qualified} {json.dumps(t.name)}" if t.name else t.res.qualified
    where = f' in the namespace "{t.namespace}"' if t.namespace else " at the cluster scope"
    return ApiError(403, "Forbidden",
                    f'{what} is forbidden: User "{user.name}" cannot {verb} resource '
                    f'"{t.res.plural}" in API group "{t.res.group}"{where}',
                    {"name": t.name or "", "group": t.res.group, "kind": t.res.plural})


def check_dry_run(value: Any) -> bool:
    """dryRun=All (query or DeleteOptions list) means dry run; any other value is refused."""
    values = value if isinstance(value, list) else [value] if value else []
    for v in values:
        if v != "All":
            raise bad_request(f'dryRun: Unsupported value: "{v}": supported values: "All"')
    return bool(values)


def parse_json(body: bytes) -> Any:
    try:
        return json.loads(body or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise bad_request(f"the body of the request could not be decoded as JSON: {err}") from err


# ---------------------------------------------------------------- discovery


def discovery(path: str, server_address: str) -> dict | None:
    """The discovery documents kubectl and the clients read; None when `path` is not one."""
    if path == "/version":
        return {"major": "1", "minor": "31", "gitVersion": "v1.31.0-canarykit",
                "gitCommit": "canarykit", "gitTreeState": "clean",
                "buildDate": "2024-01-01T00:00:00Z", "goVersion": "python",
                "compiler": "canarykit", "platform": sys.platform}
    if path == "/api":
        return {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [
            {"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}]}
    if path == "/apis":
        return {"kind": "APIGroupList", "apiVersion": "v1",
                "groups": [api_group(g) for g in GROUPS_SERVED]}
    parts = path.strip("/").split("/")
    if parts == ["api", "v1"]:
        return resource_list("", "v1")
    if len(parts) == 2 and parts[0] == "apis" and parts[1] in GROUPS_SERVED:
        return {"kind": "APIGroup", "apiVersion": "v1", **api_group(parts[1])}
    if len(parts) == 3 and parts[0] == "apis" and find_group_version(parts[1], parts[2]):
        return resource_list(parts[1], parts[2])
    return None


def find_group_version(group: str, version: str) -> bool:
    return any(r.group == group and version in r.versions for r in RESOURCES)


def api_group(group: str) -> dict:
    """The group's versions (every version any of its resources serves), preferred first."""
    versions = list(dict.fromkeys(v for r in RESOURCES if r.group == group for v in r.versions))
    entries = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
    return {"name": group, "versions": entries, "preferredVersion": entries[0]}


def resource_list(group: str, version: str) -> dict:
    resources = [{"name": r.plural, "singularName": r.singular, "namespaced": r.namespaced,
                  "kind": r.kind, "verbs": list(r.verbs), "shortNames": list(r.short_names)}
                 for r in RESOURCES if r.group == group and version in r.versions]
    group_version = f"{group}/{version}" if group else version
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version,
            "resources": resources}


def parse_target(path: str) -> Target | None:
    """Map a resource URL to a Target; None when the path names no resource we serve."""
    parts = path.strip("/").split("/")
    if parts[:1] == ["api"] and len(parts) >= 3:
        group, version, rest = "", parts[1], parts[2:]
    elif parts[:1] == ["apis"] and len(parts) >= 4:
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return None
    namespace = None
    if rest[0] == "namespaces" and len(rest) >= 3:
        namespace, rest = rest[1], rest[2:]
    if len(rest) > 2:
        return None
    res = find_resource(group, version, rest[0])
    if res is None or (namespace is not None and not res.namespaced):
        return None
    name = rest[1] if len(rest) == 2 else None
    if res.namespaced and name is not None and namespace is None:
        return None
    return Target(res, version, namespace, name)


# ---------------------------------------------------------------- HTTP


class RequestCounts:
    """The requests served, by verb, resource, dry run and status code, as a real API server
    counts them in `apiserver_request_total`: what a client's run costs the server, which the
    benchmarks measure (GET /debug/requests). A request counts once its answer is sent (a
    watch when it ends); reading the counts is not counted."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: Counter[tuple[str, str, bool, int]] = Counter()

    def add(self, verb: str, resource: str, dry_run: bool, code: int) -> None:
        with self.lock:
            self.counts[verb, resource, dry_run, code] += 1

    def snapshot(self) -> dict:
        with self.lock:
            items = sorted(self.counts.items())
        return {"total": sum(count for _, count in items),
                "requests": [{"verb": verb, "resource": resource, "dryRun": dry_run,
                              "code": code, "count": count}
                             for (verb, resource, dry_run, code), count in items]}


@dataclass
class Fault:
    """What the next `count` requests matching verb, resource and dry run meet: an error
    `code` instead of an answer (with `Retry-After` if `retry_after` is set), or, with code 0,
    the real answer after `stall` seconds (the change is made; the client may have given up)."""

    verb: str = ""  # get, list, create, update, patch, delete, watch; "" matches any
    resource: str = ""  # a plural such as virtualservices; "" matches any
    dry_run: bool | None = None  # None matches both
    code: int = 0
    retry_after: int | None = None
    stall: float = 0.0
    count: int = 1

    def matches(self, verb: str, resource: str, dry_run: bool) -> bool:
        return (self.verb in ("", verb) and self.resource in ("", resource)
                and self.dry_run in (None, dry_run))


def parse_fault(body: bytes) -> Fault:
    data = parse_json(body)
    if not isinstance(data, dict):
        raise ApiError(400, "BadRequest", "a fault is a JSON object")
    try:
        fault = Fault(verb=str(data.get("verb", "")), resource=str(data.get("resource", "")),
                      dry_run=data.get("dryRun"), code=int(data.get("code", 0)),
                      retry_after=data.get("retryAfter"), stall=float(data.get("stall", 0)),
                      count=int(data.get("count", 1)))
    except (TypeError, ValueError) as exc:
        raise ApiError(400, "BadRequest", f"bad fault: {exc}") from None
    if fault.code and fault.code not in FAULT_REASONS:
        raise ApiError(400, "BadRequest", f"fault code must be one of {sorted(FAULT_REASONS)}")
    if fault.count < 1 or not 0 <= fault.stall <= 600 or not (fault.code or fault.stall):
        raise ApiError(400, "BadRequest", "a fault needs count >= 1 and a code or a stall "
                       "(0..600 s)")
    return fault


class Faults:
    """The faults waiting for requests, taken first come first served."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.waiting: list[Fault] = []

    def add(self, fault: Fault) -> None:
        with self.lock:
            self.waiting.append(fault)

    def take(self, verb: str, resource: str, dry_run: bool) -> Fault | None:
        with self.lock:
            for fault in self.waiting:
                if fault.matches(verb, resource, dry_run):
                    fault.count -= 1
                    if fault.count == 0:
                        self.waiting.remove(fault)
                    return fault
        return None


class Handler(BaseHTTPRequestHandler):
    """One request: authenticate, read the body within its limit, route, answer JSON or a
    chunked watch stream.

    Every read and write has a timeout, so a client that stalls or vanishes frees its thread.
    A body is read only after the token is checked and its size accepted; a request whose body
    stays unread is answered, then its connection closed (what follows is not a request).
    """

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in separate writes
    server: ApiServer
    body_unread = False
    user: User = ADMIN
    counted: tuple[str, str, bool] | None = None  # (verb, resource, dry run); None: not counted
    retry_after: int | None = None  # a Retry-After header to send with the answer

    def setup(self) -> None:
        """Finish the TLS handshake here, in the request's thread, not in the accept loop."""
        self.timeout = self.server.io_timeout
        if isinstance(self.request, ssl.SSLSocket):
            self.request.settimeout(self.timeout)
            self.request.do_handshake()
        super().setup()

    def finish(self) -> None:
        """After refusing a body we did not read, stop writing and discard what the client
        still sends for a moment, so it reads our answer rather than a connection reset."""
        super().finish()
        if self.body_unread:
            linger(self.connection, LINGER_SECONDS)

    def handle_expect_100(self) -> bool:
        """Defer `100 Continue` to read_body: a refused request is never invited to send."""
        return True

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self.handle_request("GET")

    def do_POST(self) -> None:  # noqa: N802
        self.handle_request("POST")

    def do_PUT(self) -> None:  # noqa: N802
        self.handle_request("PUT")

    def do_PATCH(self) -> None:  # noqa: N802
        self.handle_request("PATCH")

    def do_DELETE(self) -> None:  # noqa: N802
        self.handle_request("DELETE")

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        """Access log without headers (the token travels in a header, never logged)."""
        sys.stderr.write(f"apiserver {self.address_string()} {format % args}\n")

    def log_request(self, code: Any = "-", size: Any = "-") -> None:
        path = urlsplit(self.path).path
        self.log_message("%s %s %s", self.command, path, getattr(code, "value", code))

    def handle_request(self, method: str) -> None:
        url = urlsplit(self.path)
        path = url.path.rstrip("/") or "/"
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        self.body_unread = has_body(self.headers)
        self.retry_after = None
        self.counted = (method.lower(), "", False)  # a resource request names its own below
        try:
            body = b""
            if path not in PUBLIC_PATHS:
                self.user = self.authenticated()
                if self.user is None:
                    raise ApiError(401, "Unauthorized", "Unauthorized")
                body = self.read_body(method)
            code, payload, warnings = self.route(method, path, query, body)
        except ApiError as err:
            code, payload, warnings = err.code, err.status(), []
        except (TimeoutError, ConnectionError):  # the client stalled or left: drop the connection
            raise
        except Exception as err:  # a bug or a failing webhook: answer 500, keep serving
            traceback.print_exc(file=sys.stderr)
            code, payload, warnings = 500, ApiError(
                500, "InternalError", f"Internal error occurred: {type(err).__name__}: {err}"
            ).status(), []
        if self.counted is not None:
            self.server.request_counts.add(*self.counted, code)
        if payload is not None:
            try:
                self.send_json(code, payload, warnings)
            except OSError:  # the client gave up waiting (a stalled answer): nobody to tell
                self.close_connection = True

    def authenticated(self) -> User | None:
        scheme, _, token = self.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer":  # Kubernetes takes the scheme in any case
            return None
        return user_for_token(self.server.store.token, token.strip())

    def read_body(self, method: str) -> bytes:
        """The body within the server's limit: 413 past it, 400 for framing that cannot be
        trusted (a bad or missing Content-Length, a body cut short); a client that stops sending
        meets the socket timeout instead of holding this thread."""
        limit = self.server.max_body_bytes
        lengths = [v.strip() for v in self.headers.get_all("Content-Length") or []]
        codings = self.headers.get_all("Transfer-Encoding") or []
        if codings:
            if lengths:
                raise bad_request("a request may not carry both Content-Length and "
                                  "Transfer-Encoding")
            if [c.strip().lower() for c in ",".join(codings).split(",")] != ["chunked"]:
                raise bad_request(f"unsupported Transfer-Encoding: {', '.join(codings)}")
            self.send_continue()
            body = self.read_chunked(limit)
        elif lengths:
            if len(set(lengths)) != 1 or not re.fullmatch(r"[0-9]+", lengths[0]):
                raise bad_request(f"invalid Content-Length: {', '.join(lengths)}")
            length = int(lengths[0]) if len(lengths[0]) <= 18 else limit + 1
            if length > limit:
                raise too_large(limit)
            self.send_continue()
            body = self.rfile.read(length)
            if len(body) < length:
                raise bad_request(f"the body ended after {len(body)} of the {length} bytes "
                                  "its Content-Length announced")
        elif method in BODY_METHODS:
            raise bad_request(f"a {method} request needs a Content-Length")
        else:
            body = b""
        self.body_unread = False
        return body

    def send_continue(self) -> None:
        if (self.headers.get("Expect", "").lower() == "100-continue"
                and self.request_version >= "HTTP/1.1"):
            self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def read_chunked(self, limit: int) -> bytes:
        chunks, total = [], 0
        while True:
            line = self.rfile.readline(1024)
            size_text = line.split(b";")[0].strip()
            if not line.endswith(b"\n") or not re.fullmatch(rb"[0-9a-fA-F]{1,16}", size_text):
                raise bad_request("invalid chunked body: bad chunk size line")
            size = int(size_text, 16)
            if size == 0:
                break
            total += size
            if total > limit:
                raise too_large(limit)
            chunk = self.rfile.read(size)
            if len(chunk) < size or self.rfile.readline(3) not in (b"\r\n", b"\n"):
                raise bad_request("invalid chunked body: a chunk was cut short")
            chunks.append(chunk)
        for _ in range(100):  # trailers, ignored
            line = self.rfile.readline(8192)
            if line in (b"\r\n", b"\n"):
                return b"".join(chunks)
            if not line.endswith(b"\n"):
                break
        raise bad_request("invalid chunked body: no end after the last chunk")

    def route(self, method: str, path: str, query: dict,
              body: bytes) -> tuple[int, dict | None, list[str]]:
        if path in ("/healthz", "/readyz", "/livez"):
            self.send_text(200, "ok")
            return 200, None, []
        doc = discovery(path, f"{self.server.server_address[0]}:{self.server.server_address[1]}")
        if doc is not None and method == "GET":
            return 200, doc, []
        if method == "POST" and path.endswith("/token"):
            return self.token_request(path)
        if path == REQUEST_COUNTS_PATH and method == "GET":
            return self.request_counts()
        if path == FAULTS_PATH and method == "POST":
            return self.add_fault(body)
        t = parse_target(path)
        if t is None:
            raise ApiError(404, "NotFound", "the server could not find the requested resource",
                           {})
        dry_run = check_dry_run(query.get("dryRun"))
        verb = {("GET", False): "list", ("GET", True): "get", ("POST", False): "create",
                ("PUT", True): "update", ("PATCH", True): "patch",
                ("DELETE", True): "delete"}.get((method, t.name is not None), "")
        if verb == "list" and query.get("watch") in ("true", "1"):
            verb = "watch"
        self.counted = (verb or method.lower(), t.res.plural, dry_run)
        if verb not in t.res.verbs or (
                t.res.namespaced and t.namespace is None and verb not in ("list", "watch")):
            raise method_not_allowed(method, t.res)
        if not authorized(self.server.store, self.user, t, verb):
            raise forbidden(self.user, t, verb)
        fault = self.server.faults.take(verb, t.res.plural, dry_run)
        if fault is not None and fault.code:
            self.retry_after = fault.retry_after
            raise ApiError(fault.code, FAULT_REASONS[fault.code],
                           f"injected fault: {fault.code} {FAULT_REASONS[fault.code]}")
        answer = self.serve(verb, t, query, body, dry_run)
        if fault is not None:
            time.sleep(fault.stall)
        return answer

    def serve(self, verb: str, t: Target, query: dict, body: bytes,
              dry_run: bool) -> tuple[int, dict | None, list[str]]:
        api = self.server.api
        if t.res.plural == "selfsubjectreviews":
            return 201, self_subject_review(t, self.user), []
        if verb == "watch":
            self.watch(t, query)
            return 200, None, []
        if verb == "list":
            return api.list(t, query)
        if verb == "get":
            return api.get(t)
        if verb == "patch":
            return api.patch(t, body, self.headers.get("Content-Type", ""), dry_run)
        parsed = parse_json(body)
        if verb == "create":
            return api.create(t, parsed, dry_run)
        if verb == "update":
            return api.replace(t, parsed, dry_run)
        return api.delete(t, parsed, dry_run)

    def request_counts(self) -> tuple[int, dict, list[str]]:
        """GET /debug/requests: the counts so far, for the administrator only (like a real
        server's /metrics, it is no business of a service account)."""
        self.counted = None
        if not self.user.is_admin:
            raise ApiError(403, "Forbidden", f'forbidden: User "{self.user.name}" cannot get '
                           f'path "{REQUEST_COUNTS_PATH}"', {})
        return 200, self.server.request_counts.snapshot(), []

    def add_fault(self, body: bytes) -> tuple[int, dict, list[str]]:
        """POST /debug/faults: the next matching requests fail (administrator only)."""
        self.counted = None
        if not self.user.is_admin:
            raise ApiError(403, "Forbidden", f'forbidden: User "{self.user.name}" cannot create '
                           f'path "{FAULTS_PATH}"', {})
        self.server.faults.add(parse_fault(body))
        return 201, {"kind": "Status", "apiVersion": "v1", "status": "Success"}, []

    def token_request(self, path: str) -> tuple[int, dict, list[str]]:
        """TokenRequest (POST .../serviceaccounts/NAME/token): a token for an existing
        service account; only the administrator may ask here."""
        parts = path.strip("/").split("/")
        if parts[:3] != ["api", "v1", "namespaces"] or len(parts) != 7 or parts[4:7:2] != [
                "serviceaccounts", "token"]:
            raise ApiError(404, "NotFound", "the server could not find the requested resource",
                           {})
        namespace, name = parts[3], parts[5]
        accounts = find_resource("", "v1", "serviceaccounts")
        if not self.user.is_admin:
            raise forbidden(self.user, Target(accounts, "v1", namespace, name), "create")
        if self.server.store.get(accounts, namespace, name) is None:
            raise not_found(accounts, name)
        token = service_account_token(self.server.store.token, namespace, name)
        return 201, {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                     "metadata": {"name": name, "namespace": namespace},
                     "spec": {"audiences": ["https://kubernetes.default.svc"]},
                     "status": {"token": token, "expirationTimestamp": times.timestamp(
                         time.time() + 3600)}}, []

    def end_headers(self) -> None:
        """Announce the close when the rest of the connection cannot be read as requests."""
        if self.body_unread:
            self.send_header("Connection", "close")
        super().end_headers()

    def send_json(self, code: int, payload: dict, warnings: list[str]) -> None:
        data = json.dumps(payload, separators=(",", ":")).encode()
        self.send_response(code)
        self.send_header("Content-Type", JSON)
        self.send_header("Content-Length", str(len(data)))
        if self.retry_after is not None:
            self.send_header("Retry-After", str(self.retry_after))
        for text in warnings:
            quoted = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ")
            self.send_header("Warning", f'299 - "{quoted.encode("ascii", "replace").decode()}"')
        self.end_headers()
        self.wfile.write(data)

    def send_text(self, code: int, text: str) -> None:
        data = text.encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def write_chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):X}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def client_gone(self) -> bool:
        """A watch client sends nothing after its request, so a readable socket means it hung
        up (or broke the protocol): either way its watch is over."""
        poller = select.poll()
        poller.register(self.connection, select.POLLIN | select.POLLPRI)
        return bool(poller.poll(0))

    def next_events(self, since: int, deadline: float) -> list[Event] | None:
        """The events after `since`, waiting for some until the deadline; [] once the watch is
        over (its time is up or the server stops), None when its client has gone."""
        store = self.server.store
        with store.cond:
            while True:
                pending = [e for e in store.events if e.rv > since] if store.rv > since else []
                if pending or store.stopping or time.monotonic() >= deadline:
                    return pending
                if self.client_gone():
                    return None
                store.cond.wait(min(WATCH_CHECK_SECONDS, max(0.0, deadline - time.monotonic())))

    def watch(self, t: Target, query: dict) -> None:
        """Stream events as newline-delimited JSON until timeoutSeconds, shutdown or hang-up."""
        store = self.server.store
        labels = parse_label_selector(query.get("labelSelector", ""))
        fields = parse_field_selector(query.get("fieldSelector", ""))
        try:
            timeout = float(query.get("timeoutSeconds") or DEFAULT_WATCH_SECONDS)
            start_rv = query.get("resourceVersion") or "0"
            since = int(start_rv)
        except ValueError as err:
            raise bad_request(f"invalid watch parameter: {err}") from err
        deadline = time.monotonic() + timeout
        with store.cond:
            if start_rv == "0":
                initial = [{"type": "ADDED", "object": render(o, t.res, t.version)}
                           for o in store.list(t.res, t.namespace) if selected(o, labels, fields)]
                since = store.rv
            elif since < store.history_floor:
                initial = [{"type": "ERROR", "object": ApiError(
                    410, "Expired", f"too old resource version: {since} ({store.history_floor})"
                ).status()}]
                deadline = 0
            else:
                initial = []
        self.send_response(200)
        self.send_header("Content-Type", JSON)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            for event in initial:
                self.write_chunk(json.dumps(event).encode() + b"\n")
            while pending := self.next_events(since, deadline):
                for event in pending:
                    since = event.rv
                    line = watch_line(event, t, labels, fields)
                    if line is not None:
                        self.write_chunk(line)
            if pending is None:
                self.close_connection = True
                return
            self.write_chunk(b"")
        except OSError:  # the client went away or stopped reading (the write timed out)
            self.close_connection = True
        except Exception:  # headers are out: log it and drop the connection
            traceback.print_exc(file=sys.stderr)
            self.close_connection = True


def has_body(headers: Any) -> bool:
    """Whether the request announces a body at all (an unread one means closing afterwards)."""
    lengths = [v.strip() for v in headers.get_all("Content-Length") or []]
    return bool(headers.get_all("Transfer-Encoding")) or any(v != "0" for v in lengths)


def linger(sock: socket.socket, seconds: float) -> None:
    """Half-close, then read and drop what the client still sends, for at most `seconds`."""
    deadline = time.monotonic() + seconds
    try:
        sock.shutdown(socket.SHUT_WR)
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            if not sock.recv(65536):
                return
    except OSError:
        pass


def watch_line(event: Event, t: Target, labels: list, fields: list) -> bytes | None:
    """The event as this watcher sees it: its resource, namespace, selectors and version."""
    if event.res is not t.res:
        return None
    if t.namespace is not None and event.obj["metadata"].get("namespace") != t.namespace:
        return None
    now_in = selected(event.obj, labels, fields)
    was_in = event.old is not None and selected(event.old, labels, fields)
    kind = event.type
    if kind == "MODIFIED" and now_in != was_in:
        kind = "ADDED" if now_in else "DELETED"
    elif not now_in:
        return None
    payload = {"type": kind, "object": render(event.obj, t.res, t.version)}
    return json.dumps(payload, separators=(",", ":")).encode() + b"\n"


class ApiServer(ThreadingHTTPServer):
    """The HTTP(S) server plus its store; `stop()` ends watches and closes the socket."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], store: Store,
                 tls: tuple[Path, Path] | None = None, max_body_bytes: int = MAX_BODY_BYTES,
                 io_timeout: float = IO_TIMEOUT_SECONDS) -> None:
        super().__init__(address, Handler)
        self.store = store
        self.max_body_bytes = max_body_bytes
        self.io_timeout = io_timeout
        self.api = Api(store)
        self.request_counts = RequestCounts()
        self.faults = Faults()
        self.certificate: str | None = None
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            self.socket = context.wrap_socket(self.socket, server_side=True,
                                              do_handshake_on_connect=False)
            self.certificate = tls[0].read_text()

    @property
    def url(self) -> str:
        scheme = "https" if self.certificate else "http"
        return f"{scheme}://{self.server_address[0]}:{self.server_address[1]}"

    @property
    def token(self) -> str:
        return self.store.token

    def stop(self) -> None:
        self.store.stop()
        self.shutdown()
        self.server_close()


def ensure_certificate(data_dir: Path, host: str) -> tuple[Path, Path]:
    """A self-signed certificate for `host`, made once with the openssl tool and kept in DIR.

    kubectl (client-go) sends bearer tokens only over TLS, so kubectl needs --tls.
    """
    cert, key = data_dir / "tls.crt", data_dir / "tls.key"
    if cert.exists() and key.exists():
        return cert, key
    data_dir.mkdir(parents=True, exist_ok=True)
    alt_names = ["IP:127.0.0.1", "DNS:localhost"]
    if host not in ("127.0.0.1", "localhost"):
        is_ip = re.fullmatch(r"[\d.]+|[\da-fA-F:]+", host)
        alt_names.append(f"IP:{host}" if is_ip else f"DNS:{host}")
    command = ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
               "ec_paramgen_curve:prime256v1", "-nodes", "-days", "3650",
               "-subj", "/CN=canarykit-lab", "-addext", "subjectAltName=" + ",".join(alt_names),
               "-keyout", str(key), "-out", str(cert)]
    try:
        subprocess.run(command, check=True, capture_output=True, text=True)
    except FileNotFoundError as err:
        raise RuntimeError("--tls needs the openssl command to make a certificate") from err
    except subprocess.CalledProcessError as err:
        raise RuntimeError(f"openssl could not make a certificate: {err.stderr.strip()}") from err
    os.chmod(key, 0o600)
    return cert, key


def start_server(data_dir: str | Path, port: int = 0, host: str = "127.0.0.1",
                 token: str | None = None, tls: bool = False,
                 max_body_bytes: int = MAX_BODY_BYTES,
                 io_timeout: float = IO_TIMEOUT_SECONDS) -> tuple[ApiServer, threading.Thread]:
    """Start serving in a background thread (for the lab to embed); stop with server.stop()."""
    store = Store(Path(data_dir), token)
    certificate = ensure_certificate(Path(data_dir), host) if tls else None
    server = ApiServer((host, port), store, certificate, max_body_bytes, io_timeout)
    thread = threading.Thread(target=server.serve_forever, name="apiserver", daemon=True)
    thread.start()
    return server, thread


def kubeconfig_text(url: str, token: str, certificate: str | None = None,
                    namespace: str = "default") -> str:
    cluster: dict[str, str] = {"server": url}
    if certificate:
        cluster["certificate-authority-data"] = base64.b64encode(certificate.encode()).decode()
    config = {
        "apiVersion": "v1", "kind": "Config", "preferences": {},
        "clusters": [{"name": CLUSTER, "cluster": cluster}],
        "users": [{"name": USER, "user": {"token": token}}],
        "contexts": [{"name": CLUSTER, "context": {"cluster": CLUSTER, "user": USER,
                                                   "namespace": namespace}}],
        "current-context": CLUSTER,
    }
    return yaml.safe_dump(config, sort_keys=False)


def write_kubeconfig(path: str | Path, server: ApiServer) -> None:
    """Atomically, so whoever waits for the file reads all of it or nothing."""
    write_atomically(Path(path), kubeconfig_text(server.url, server.token, server.certificate))


# ---------------------------------------------------------------- CLI


def _positive_int(text: str) -> int:
    if not re.fullmatch(r"[0-9]+", text) or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number above 0, got {text!r}")
    return int(text)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, default=0, help="port to listen on (0: a free one)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--data", required=True, help="directory holding the objects and token")
    parser.add_argument("--kubeconfig", required=True,
                        help="kubeconfig file to write once the server listens")
    parser.add_argument("--token", default=None,
                        help="bearer token (default: the one stored in --data, else a new one)")
    parser.add_argument("--tls", action="store_true",
                        help="serve HTTPS with a self-signed certificate kept in --data "
                        "(kubectl sends tokens only over TLS)")
    parser.add_argument("--max-body-bytes", type=_positive_int, default=MAX_BODY_BYTES,
                        help="largest request body accepted; larger ones get 413 "
                        f"(default {MAX_BODY_BYTES}, Kubernetes' own limit)")


def run(args: argparse.Namespace) -> int:
    """Serve in the foreground until SIGTERM or SIGINT, then shut down cleanly (exit 0)."""
    server, thread = start_server(args.data, args.port, args.host, args.token,
                                  getattr(args, "tls", False),
                                  getattr(args, "max_body_bytes", MAX_BODY_BYTES))
    stop = process_main.stop_on_signals()
    write_kubeconfig(args.kubeconfig, server)
    sys.stderr.write(f"apiserver listening on {server.url}, kubeconfig {args.kubeconfig}\n")
    sys.stderr.flush()
    while not stop.wait(0.5):
        pass
    server.stop()
    thread.join(timeout=10)
    sys.stderr.write("apiserver stopped\n")
    return 0


if __name__ == "__main__":
    process_main.main("canarykit.lab.apiserver", __doc__, add_arguments, run)
