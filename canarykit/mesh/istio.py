"""Istio VirtualService and DestinationRule objects as plain dicts: load, dump, look up routes.

canarykit writes only the managed fields (`MANAGED_FIELDS`); everything else in an object is
carried through unchanged, so a load/dump round trip never changes what an object means.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from canarykit.core.errors import BadInput

ISTIO_GROUP = "networking.istio.io"
ISTIO_VERSIONS = ("v1", "v1beta1", "v1alpha3")
API_VERSIONS = tuple(f"{ISTIO_GROUP}/{v}" for v in ISTIO_VERSIONS)
KINDS = {"VirtualService": "virtualservices", "DestinationRule": "destinationrules"}
# Envoy's retry conditions (x-envoy-retry-on) Istio accepts in retryOn; HTTP codes are allowed too.
RETRY_ON_POLICIES = frozenset({
    "5xx", "gateway-error", "reset", "connect-failure", "envoy-ratelimited", "retriable-4xx",
    "refused-stream", "retriable-status-codes", "retriable-headers", "cancelled",
    "deadline-exceeded", "internal", "resource-exhausted", "unavailable",
    "http3-post-connect-failure", "reset-before-request",
})
HASH_KEYS = ("httpHeaderName", "httpCookie", "useSourceIp", "httpQueryParameterName")
MANAGED_FIELDS = {"VirtualService": ("http",), "DestinationRule": ("trafficPolicy", "subsets")}

_LIST_KINDS = {"List", "VirtualServiceList", "DestinationRuleList"}
_CLUSTER_SUFFIX = ".svc.cluster.local"
_TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"
_MERGE_TAG = "tag:yaml.org,2002:merge"

_BaseLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Loader(_BaseLoader):  # type: ignore[misc, valid-type]
    """Safe YAML loading that keeps timestamps as strings (they must stay JSON-serialisable,
    as Kubernetes sends them) and refuses duplicate keys (the last one silently wins otherwise).
    """

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict:
        if isinstance(node, yaml.MappingNode):
            seen: set[tuple[str, str]] = set()
            for key_node, _ in node.value:
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == _MERGE_TAG:
                    continue
                key = (key_node.tag, key_node.value)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping", node.start_mark,
                        f"found duplicate key {key_node.value!r}", key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != _TIMESTAMP_TAG]
    for first, resolvers in _BaseLoader.yaml_implicit_resolvers.items()
}


class _Dumper(yaml.SafeDumper):
    """Block-style YAML without anchors: a shared sub-object is written out in full each time."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def copy_object(obj: Any) -> Any:
    """A deep copy of plain YAML/JSON data that shares nothing, not even YAML aliases.

    `copy.deepcopy` keeps two references to one dict as two references in the copy; changing
    one route would then silently change the other.
    """
    if isinstance(obj, dict):
        return {key: copy_object(value) for key, value in obj.items()}
    if isinstance(obj, list):
        return [copy_object(item) for item in obj]
    return obj


def load_documents(text: str, source: str = "<input>") -> list[dict]:
    """Parse multi-document YAML into plain dicts, checking Istio kinds' apiVersion.

    Empty documents are skipped; `kind: List` documents are expanded into their items. Objects
    of other kinds (Service, Deployment, ...) are returned unchanged.
    """
    objs: list[dict] = []
    number = 0
    try:
        for number, doc in enumerate(yaml.load_all(text, Loader=_Loader), start=1):
            if doc is None:
                continue
            where = f"{source} document {number}"
            if isinstance(doc, dict) and doc.get("kind") in _LIST_KINDS and "items" in doc:
                items = doc["items"]
                if not isinstance(items, list):
                    raise BadInput(f"{where} items", _short(items), "must be a list of objects")
                for index, item in enumerate(items):
                    objs.append(_checked(copy_object(item), f"{where} items[{index}]"))
            else:
                objs.append(_checked(copy_object(doc), where))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        place = f"line {mark.line + 1}, column {mark.column + 1}" if mark else f"document {number}"
        problem = getattr(err, "problem", None) or str(err)
        raise BadInput(source, place, f"is not valid YAML: {problem}") from None
    return objs


def _checked(doc: Any, where: str) -> dict:
    if not isinstance(doc, dict):
        raise BadInput(where, _short(doc), "must be a mapping (a Kubernetes object)")
    kind = doc.get("kind")
    if not isinstance(kind, str) or not kind:
        raise BadInput(f"{where} kind", kind, "must name the object's kind")
    if kind in KINDS:
        api_version = doc.get("apiVersion")
        if api_version not in API_VERSIONS:
            raise BadInput(f"{where} apiVersion", api_version,
                           f"{kind} must have apiVersion one of {', '.join(API_VERSIONS)}")
        for key in ("metadata", "spec"):
            if key in doc and not isinstance(doc[key], dict):
                raise BadInput(f"{where} {key}", _short(doc[key]), "must be a mapping")
    return doc


def _short(value: Any, limit: int = 80) -> Any:
    """A value small enough to quote in an error message."""
    text = repr(value)
    return value if len(text) <= limit else text[: limit - 3] + "..."


def load_file(path: str | Path) -> list[dict]:
    """`load_documents` of a file, naming the file in errors."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise BadInput("file", str(path), f"cannot be read: {err.strerror}") from None
    return load_documents(text, source=str(path))


def dump_object(obj: dict) -> str:
    """Block-style YAML with keys in their original order."""
    return yaml.dump(obj, Dumper=_Dumper, sort_keys=False, default_flow_style=False,
                     allow_unicode=True, width=4096)


def dump_documents(objs: list[dict]) -> str:
    """Multi-document YAML, `---` between documents."""
    return "---\n".join(dump_object(obj) for obj in objs)


def namespace_of(obj: dict) -> str:
    """The object's namespace; `default` when the object does not say."""
    metadata = obj.get("metadata") or {}
    return metadata.get("namespace") or "default"


def object_ref(obj: dict) -> str:
    """`VirtualService default/reviews`: how logs, diffs and errors name an object."""
    name = (obj.get("metadata") or {}).get("name") or "<unnamed>"
    return f"{obj.get('kind', '<no kind>')} {namespace_of(obj)}/{name}"


def _managed_names(obj: dict) -> tuple[str, ...]:
    kind = obj.get("kind") if isinstance(obj, dict) else None
    if kind not in MANAGED_FIELDS:
        raise BadInput("kind", kind, "canarykit manages only VirtualService and DestinationRule")
    return MANAGED_FIELDS[kind]


def managed_fields(obj: dict) -> dict:
    """A copy of the spec fields canarykit manages that are present: the rollback snapshot."""
    spec = obj.get("spec") or {}
    return {name: copy_object(spec[name]) for name in _managed_names(obj) if name in spec}


def with_managed_fields(obj: dict, fields: dict) -> dict:
    """A copy of `obj` whose managed spec fields are exactly `fields` (absent ones removed).

    Existing keys keep their position, so nothing else in the YAML moves.
    """
    names = _managed_names(obj)
    if not isinstance(fields, dict):
        raise BadInput("fields", _short(fields), "must be a mapping of managed spec fields")
    for name in fields:
        if name not in names:
            raise BadInput("fields", name,
                           f"{obj['kind']} managed fields are only {', '.join(names)}")
    result = copy_object(obj)
    spec = result.setdefault("spec", {})
    for name in names:
        if name in fields:
            spec[name] = copy_object(fields[name])
        else:
            spec.pop(name, None)
    return result


def host_fqdn(host: str, namespace: str) -> str:
    """The fully qualified name Istio resolves `host` to from `namespace`.

    `reviews`, `reviews.default` and `reviews.default.svc` all mean
    `reviews.default.svc.cluster.local` when written in namespace `default`.
    """
    name = host.strip().lower().rstrip(".")
    if name.startswith("*") or name.endswith(_CLUSTER_SUFFIX):
        return name
    if name.endswith(".svc"):
        return name + ".cluster.local"
    parts = name.split(".")
    if len(parts) == 1:
        return f"{name}.{namespace}{_CLUSTER_SUFFIX}"
    if len(parts) == 2:
        return name + _CLUSTER_SUFFIX
    return name


def short_host(host: str, namespace: str) -> str:
    """The shortest name of `host` as seen from `namespace` (`reviews`, `ratings.other`)."""
    fqdn = host_fqdn(host, namespace)
    if fqdn.endswith(f".{namespace}{_CLUSTER_SUFFIX}"):
        return fqdn[: -len(f".{namespace}{_CLUSTER_SUFFIX}")]
    if fqdn.endswith(_CLUSTER_SUFFIX):
        return fqdn[: -len(_CLUSTER_SUFFIX)]
    return fqdn


def same_host(a: str, b: str, namespace: str) -> bool:
    """Whether two host names written in `namespace` name the same service."""
    return host_fqdn(a, namespace) == host_fqdn(b, namespace)


def http_routes(vs: dict) -> list[dict]:
    """The VirtualService's HTTP routes (`spec.http`), checked to be a list of mappings."""
    if not isinstance(vs, dict) or vs.get("kind") != "VirtualService":
        kind = vs.get("kind") if isinstance(vs, dict) else type(vs).__name__
        raise BadInput("kind", kind, "must be VirtualService")
    http = (vs.get("spec") or {}).get("http") or []
    if not isinstance(http, list) or not all(isinstance(r, dict) for r in http):
        raise BadInput("spec.http", _short(http), "must be a list of HTTP routes")
    return http


def route_label(vs: dict, index: int) -> str:
    """A route's name, or `http[i]` for an unnamed one."""
    name = http_routes(vs)[index].get("name")
    return name if name else f"http[{index}]"


def route_destinations(route: dict) -> list[dict]:
    """The route's weighted destinations (`route[]` entries: `{destination, weight, ...}`)."""
    entries = route.get("route") or []
    return [entry for entry in entries if isinstance(entry, dict)]


def route_subsets(route: dict) -> list[str | None]:
    """The subset of each destination of a route, in order (None where no subset is named)."""
    return [(entry.get("destination") or {}).get("subset") for entry in route_destinations(route)]


def subset_weights(route: dict) -> dict[str | None, int]:
    """Traffic share per subset: a lone destination without weight takes 100, otherwise
    a destination without weight takes 0."""
    entries = route_destinations(route)
    if len(entries) == 1 and "weight" not in entries[0]:
        return {route_subsets(route)[0]: 100}
    weights: dict[str | None, int] = {}
    for subset, entry in zip(route_subsets(route), entries, strict=True):
        weights[subset] = weights.get(subset, 0) + int(entry.get("weight") or 0)
    return weights


def route_index(vs: dict, name: str) -> int:
    """Index in spec.http of the route called `name`; BadInput listing the names that exist."""
    http = http_routes(vs)
    for index, route in enumerate(http):
        if route.get("name") == name:
            return index
    names = [r["name"] for r in http if r.get("name")]
    known = ", ".join(names) if names else "no route has a name"
    raise BadInput("route", name, f"{object_ref(vs)} has no HTTP route of that name ({known})")


def find_canary_route(vs: dict, stable: str, canary: str, route: str | None = None) -> int:
    """Index in spec.http of the route that splits traffic between `stable` and `canary`.

    A named `route` is looked up by name. Otherwise it is the catch-all route (no `match`) whose
    destinations are all the stable and/or canary subset of one host; failing that, the only
    such route. Routes that pin users to one subset by header sit in front of it.
    """
    if route is not None:
        return route_index(vs, route)
    http = http_routes(vs)
    namespace = namespace_of(vs)
    candidates = []
    for index, candidate in enumerate(http):
        entries = route_destinations(candidate)
        subsets = route_subsets(candidate)
        hosts = [(e.get("destination") or {}).get("host") or "" for e in entries]
        if (entries and all(s in (stable, canary) for s in subsets)
                and all(same_host(h, hosts[0], namespace) for h in hosts)):
            candidates.append(index)
    catch_all = [i for i in candidates if not http[i].get("match")]
    if len(catch_all) == 1:
        return catch_all[0]
    if not catch_all and len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise BadInput("route", None,
                       f"no HTTP route of {object_ref(vs)} sends traffic only to subsets "
                       f"{stable}/{canary}; name the route to use")
    found = ", ".join(route_label(vs, i) for i in (catch_all or candidates))
    raise BadInput("route", None,
                   f"several HTTP routes of {object_ref(vs)} send traffic only to subsets "
                   f"{stable}/{canary} ({found}); name the route to use")


def destination_rule_subsets(dr: dict) -> list[str]:
    """Names of the DestinationRule's subsets, in order."""
    if not isinstance(dr, dict) or dr.get("kind") != "DestinationRule":
        kind = dr.get("kind") if isinstance(dr, dict) else type(dr).__name__
        raise BadInput("kind", kind, "must be DestinationRule")
    subsets = (dr.get("spec") or {}).get("subsets") or []
    return [s.get("name") for s in subsets if isinstance(s, dict)]


DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


def is_dns1123_label(text: Any) -> bool:
    """Whether `text` is a DNS-1123 label (what Istio requires of subset names)."""
    return isinstance(text, str) and len(text) <= 63 and DNS1123_LABEL.fullmatch(text) is not None


def check_dns_label(field_name: str, value: Any) -> str:
    """Refuse a service, namespace or subset name that is not a DNS-1123 label."""
    if not is_dns1123_label(value):
        raise BadInput(
            field_name,
            value,
            "must be a DNS-1123 label: lower-case letters, digits and '-', at most 63 "
            "characters, starting and ending with a letter or digit",
        )
    return value
