"""Istio VirtualService and DestinationRule objects as plain dicts: dump, look up routes.

canarykit writes only the managed fields (`MANAGED_FIELDS`); everything else in an object is
carried through unchanged.
"""

from __future__ import annotations

import functools
import re
from typing import Any

from canarykit.core import names  # hosts compare (same_host) by the one rule there
from canarykit.core.errors import BadInput

ISTIO_GROUP = "networking.istio.io"
STRING_MATCH_KINDS = ("exact", "prefix", "regex")  # an Istio StringMatch
# A JWT claim as a header match (only at a gateway): @request.auth.claims.NAME, .a.b, [a][b]
CLAIM_HEADER = re.compile(r"@request\.auth\.claims(?:(?:\.[^.\[\]]+)+|(?:\[[^\[\]]+\])+)")
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
# The spec fields canarykit changes, per kind it changes (Gateway API routes: their rules).
MANAGED_FIELDS = {"VirtualService": ("http",), "DestinationRule": ("trafficPolicy", "subsets"),
                  "HTTPRoute": ("rules",), "GRPCRoute": ("rules",)}


@functools.cache
def _dumper() -> Any:
    """Block-style YAML without anchors: a shared sub-object is written out in full each time.

    Made on first use, so `canarykit validate` (which only reads) never imports PyYAML."""
    import yaml

    class Dumper(yaml.SafeDumper):
        def ignore_aliases(self, data: Any) -> bool:
            return True

    return Dumper


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


def _short(value: Any, limit: int = 80) -> Any:
    """A value small enough to quote in an error message."""
    text = repr(value)
    return value if len(text) <= limit else text[: limit - 3] + "..."


def dump_object(obj: dict) -> str:
    """Block-style YAML with keys in their original order."""
    import yaml

    return yaml.dump(obj, Dumper=_dumper(), sort_keys=False, default_flow_style=False,
                     allow_unicode=True, width=4096)


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
        raise BadInput("kind", kind, f"canarykit manages only {', '.join(MANAGED_FIELDS)}")
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


def missing_fields(sent: Any, kept: Any, path: str) -> list[str]:
    """Paths `sent` has (with a value) that `kept` lacks: what an API server pruned. Values
    the server changed or fields it added do not count."""
    if isinstance(sent, dict):
        if not isinstance(kept, dict):
            return [path]
        return [found for key, value in sent.items() if value is not None
                for found in ([f"{path}.{key}"] if key not in kept
                              else missing_fields(value, kept[key], f"{path}.{key}"))]
    if isinstance(sent, list):
        if not isinstance(kept, list):
            return [path]
        return [found for index, item in enumerate(sent)
                for found in ([f"{path}[{index}]"] if index >= len(kept)
                              else missing_fields(item, kept[index], f"{path}[{index}]"))]
    return []


def same_host(a: str, b: str, namespace: str) -> bool:
    """Whether two host names written in `namespace` name the same service."""
    return names.same_host(a, b, namespace)


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

