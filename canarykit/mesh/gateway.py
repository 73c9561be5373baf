"""Pure operations on Gateway API HTTPRoutes and GRPCRoutes, each returning a `Change`.

The second traffic router beside Istio's VirtualService (`traffic.py`), with the same contract:
parameters are checked first (BadInput naming the parameter and value), the input is never
mutated, every operation is idempotent, and `Change.after` is a new copy.

The model: versions are separate Services (`reviews-v1`, `reviews-v2`) named by `backendRefs`
(kind Service and group "" by default); weights are relative integers (absent means 1) that
canarykit shows and sets as percentages. canarykit writes only inside `spec.rules`: the canary
rule's backendRefs, weights, timeouts and its own RequestMirror filters, and the rules it adds
(named `canarykit-...`). Every other rule, filter (ExtensionRef and unknown ones included),
match, parentRef, hostname and annotation is carried through unchanged, in its order.
"""

from __future__ import annotations

import re
from fractions import Fraction
from typing import Any

from canarykit.core.errors import BadInput
from canarykit.core.names import check_dns_label, is_dns1123_subdomain, is_header_name
from canarykit.mesh import istio
from canarykit.mesh.traffic import Change, _change, _percent, _regex, _text, _weight, cookie_regex

GATEWAY_GROUP = "gateway.networking.k8s.io"
GATEWAY_VERSION = "v1"
KINDS = {"HTTPRoute": "httproutes", "GRPCRoute": "grpcroutes"}
MANAGED_PREFIX = "canarykit-"  # names of rules canarykit adds (rules[].name)

# Limits of the v1.6.1 standard-channel CRDs.
MAX_RULES = 16
MAX_MATCHES = 64  # per rule
MAX_TOTAL_MATCHES = 128  # across the rules of one route (a CEL rule)
MAX_CONDITIONS = 16  # header or query parameter matches per match
MAX_WEIGHT = 1_000_000
MATCH_TYPES = ("Exact", "RegularExpression")
MIRROR = "RequestMirror"
# GEP-2257 durations: 1 to 4 parts of up to 5 digits and a unit; "0s" switches a timeout off.
_DURATION = re.compile(r"(?:[0-9]{1,5}(?:h|m|s|ms)){1,4}")
_DURATION_PART = re.compile(r"([0-9]{1,5})(h|ms|m|s)")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
_REF_FIELDS = ("group", "kind", "name", "namespace", "port")  # what a new backendRef copies
_DEFAULT_HTTP_MATCH = {"path": {"type": "PathPrefix", "value": "/"}}  # the API's default


def duration_seconds(value: Any) -> float | None:
    """Seconds of a Gateway API Duration (`10s`, `1h30m`, `500ms`); None when it is not one.

    Stricter than Go's durations: no fractions, no signs, no µs/ns, at most 5 digits a part.
    """
    if not isinstance(value, str) or not _DURATION.fullmatch(value):
        return None
    return sum(int(n) * _UNIT_SECONDS[unit] for n, unit in _DURATION_PART.findall(value))


# --- reading a route ------------------------------------------------------------------------

def rules(route: dict) -> list[dict]:
    """The route's rules (`spec.rules`), checked to be a list of mappings."""
    if not isinstance(route, dict) or route.get("kind") not in KINDS:
        kind = route.get("kind") if isinstance(route, dict) else type(route).__name__
        raise BadInput("kind", kind, "must be HTTPRoute or GRPCRoute")
    spec = route.get("spec") if isinstance(route.get("spec"), dict) else {}
    found = spec.get("rules") or []
    if not isinstance(found, list) or not all(isinstance(r, dict) for r in found):
        raise BadInput("spec.rules", istio._short(found), "must be a list of rules")
    return found


def rule_label(route: dict, index: int) -> str:
    """How messages name a rule: `rule 'api' (#2)`, or `rule #2` when it has no name."""
    name = rules(route)[index].get("name")
    return f"rule {name!r} (#{index})" if isinstance(name, str) and name else f"rule #{index}"


def _service_name(ref: Any) -> str | None:
    """The Service a backendRef names; None for another kind (ServiceImport, ...)."""
    if not isinstance(ref, dict) or not isinstance(ref.get("name"), str):
        return None
    if ref.get("group") not in (None, "") or ref.get("kind") not in (None, "Service"):
        return None
    return ref["name"]


def _ref_text(ref: Any) -> str:
    if not isinstance(ref, dict):
        return repr(ref)
    name = _service_name(ref)
    return name if name is not None else f"{ref.get('kind')} {ref.get('name')}"


def _backend_refs(rule: dict) -> list:
    refs = rule.get("backendRefs")
    return refs if isinstance(refs, list) else []


def _weight_of(ref: Any) -> int:
    """A backendRef's relative weight: absent (or null) means the API's default of 1."""
    weight = ref.get("weight") if isinstance(ref, dict) else 0
    if weight is None:
        return 1
    return weight if isinstance(weight, int) and not isinstance(weight, bool) and weight > 0 \
        else 0


def _mirror_refs(filters: Any) -> list[dict]:
    """The backendRefs of the RequestMirror filters in a filter list."""
    found = []
    for item in filters if isinstance(filters, list) else []:
        mirror = item.get("requestMirror") if isinstance(item, dict) else None
        if item.get("type") == MIRROR and isinstance(mirror, dict) \
                and isinstance(mirror.get("backendRef"), dict):
            found.append(mirror["backendRef"])
    return found


def _mirrors_to(item: Any, service: str) -> bool:
    return isinstance(item, dict) and any(
        _service_name(ref) == service for ref in _mirror_refs([item]))


def _is_managed(rule: dict) -> bool:
    name = rule.get("name")
    return isinstance(name, str) and name.startswith(MANAGED_PREFIX)


def rule_backends(rule: dict) -> list[str]:
    """The Services a rule sends traffic to (its backendRefs of kind Service), in order."""
    return [name for ref in _backend_refs(rule) if (name := _service_name(ref)) is not None]


def backend_services(route: dict) -> list[str]:
    """Every Service the route names, once each: rule by rule, its backendRefs (each followed
    by the mirrors in its own filters), then the rule's RequestMirror filters."""
    names: list[str | None] = []
    for rule in rules(route):
        for ref in _backend_refs(rule):
            names.append(_service_name(ref))
            if isinstance(ref, dict):
                names += [_service_name(m) for m in _mirror_refs(ref.get("filters"))]
        names += [_service_name(m) for m in _mirror_refs(rule.get("filters"))]
    return list(dict.fromkeys(name for name in names if name is not None))


def _rule_index(route: dict, name: str) -> int:
    """Index of the rule called `name`; BadInput listing the names that exist."""
    found = rules(route)
    for index, candidate in enumerate(found):
        if candidate.get("name") == name:
            return index
    names = [r["name"] for r in found if isinstance(r.get("name"), str) and r["name"]]
    known = ", ".join(names) if names else "no rule has a name"
    raise BadInput("rule", name, f"{istio.object_ref(route)} has no rule of that name ({known})")


def find_canary_rule(route: dict, stable: str, canary: str, rule: str | None = None) -> int:
    """Index of the rule that splits traffic between `stable` and `canary`.

    A named `rule` is looked up by name. Otherwise, among the rules canarykit did not add
    that send to stable and/or canary: the one that names both, else the only one, else the
    only one without matches (the catch-all); anything else is refused, because guessing
    would move traffic of a route nobody meant.
    """
    if rule is not None:
        return _rule_index(route, rule)
    found = rules(route)
    candidates = [i for i, r in enumerate(found)
                  if not _is_managed(r) and {stable, canary} & set(rule_backends(r))]
    both = [i for i in candidates if {stable, canary} <= set(rule_backends(found[i]))]
    catch_all = [i for i in candidates if not found[i].get("matches")]
    for chosen in (both, candidates, catch_all):
        if len(chosen) == 1:
            return chosen[0]
    if not candidates:
        raise BadInput("rule", None, f"no rule of {istio.object_ref(route)} sends traffic to "
                       f"{stable} or {canary}; name the rule to use")
    listed = ", ".join(rule_label(route, i) for i in (both or candidates))
    raise BadInput("rule", None, f"several rules of {istio.object_ref(route)} send traffic to "
                   f"{stable} or {canary} ({listed}); name the rule to use")


def _percentages(weights: list[int]) -> list[int]:
    """Whole percentages of relative weights that sum to exactly 100 (largest remainder:
    each gets its share rounded down, the points left go to the largest remainders, ties
    to the earlier one). All zero stays all zero: the rule serves nothing."""
    total = sum(weights)
    if total == 0:
        return [0] * len(weights)
    shares = [100 * w // total for w in weights]
    remainders = [100 * w % total for w in weights]
    for i in sorted(range(len(weights)), key=lambda i: -remainders[i])[:100 - sum(shares)]:
        shares[i] += 1
    return shares


def weights_percent(route: dict, stable: str, canary: str,
                    rule: str | None = None) -> dict[str, int]:
    """`{stable: p, canary: q}`: the canary rule's shares as whole percentages.

    Shares are of the rule's whole weight, other backends included (so p + q is below 100
    when there are others), rounded by largest remainder so all backends together make
    exactly 100: 3:1 is 75/25, 1:2 is 33/67, 1:1:1 is 34/33/33. A rule whose weights are all
    0 serves nothing and shows 0/0.
    """
    _pair(stable, canary)
    target = rules(route)[find_canary_rule(route, stable, canary, rule)]
    refs = _backend_refs(target)
    result = {stable: 0, canary: 0}
    for ref, share in zip(refs, _percentages([_weight_of(r) for r in refs]), strict=True):
        name = _service_name(ref)
        if name in result:
            result[name] += share
    return result


def routes_to(route: dict, backend: str) -> list[str]:
    """Labels of the rules (other than canarykit's) still sending traffic (weight > 0) to
    `backend`: after a promotion, what is left on the old version."""
    return [rule_label(route, i) for i, r in enumerate(rules(route)) if not _is_managed(r)
            and any(_service_name(ref) == backend and _weight_of(ref) > 0
                    for ref in _backend_refs(r))]


# --- parameter checks and shared steps ------------------------------------------------------

def _pair(stable: str, canary: str) -> None:
    check_dns_label("stable", stable)
    check_dns_label("canary", canary)
    if canary == stable:
        raise BadInput("canary", canary, f"must differ from the stable Service {stable!r}")


def _managed_name(name: Any) -> str:
    """The rule name for `name`: prefixed with MANAGED_PREFIX unless it already is."""
    full = name if isinstance(name, str) and name.startswith(MANAGED_PREFIX) \
        else f"{MANAGED_PREFIX}{name}"
    if not isinstance(name, str) or not name or not is_dns1123_subdomain(full):
        raise BadInput("name", name, "must be lower-case letters, digits, '-' and '.' (the rule "
                       f"becomes {MANAGED_PREFIX}<name>, a DNS-1123 subdomain)")
    return full


def _locate(route: dict, stable: str, canary: str, rule: str | None) -> tuple[dict, dict, str]:
    """A copy of `route`, the canary rule inside that copy, and the rule's label."""
    rules(route)
    after = istio.copy_object(route)
    index = find_canary_rule(after, stable, canary, rule)
    return after, after["spec"]["rules"][index], rule_label(after, index)


def _template(rule: dict, label: str, stable: str, canary: str) -> dict:
    """The backendRef to copy port, kind, group and namespace from: stable's, else canary's."""
    refs = {_service_name(ref): ref for ref in reversed(_backend_refs(rule))}
    template = refs.get(stable) or refs.get(canary)
    if template is None:
        raise BadInput("rule", label, f"has no backendRef to {stable} or {canary} to take the "
                       "port from")
    return template


def _new_ref(template: dict, name: str) -> dict:
    return {key: name if key == "name" else istio.copy_object(template[key])
            for key in _REF_FIELDS if key in template}


def _split(rule: dict, label: str, stable: str, canary: str, weight: int) -> None:
    """Make the rule send `100-weight` to stable and `weight` to canary, both refs kept."""
    entries = _backend_refs(rule)
    names = [_service_name(ref) for ref in entries]
    others = [_ref_text(ref) for ref, name in zip(entries, names, strict=True)
              if name not in (stable, canary)]
    if others:
        raise BadInput("rule", label, f"also sends traffic to {', '.join(others)}; canarykit "
                       f"splits only between {stable} and {canary}")
    for field, service in (("stable", stable), ("canary", canary)):
        if names.count(service) > 1:
            raise BadInput(field, service, f"{label} has several backendRefs to this Service")
    template = _template(rule, label, stable, canary)
    if stable not in names:
        entries.insert(0, _new_ref(template, stable))
    if canary not in names:
        entries.append(_new_ref(template, canary))
    for ref in entries:
        ref["weight"] = weight if ref["name"] == canary else 100 - weight


def _drop_mirrors(rule: dict, service: str) -> None:
    """Remove the rule's RequestMirror filters to `service`; an emptied list goes too."""
    filters = rule.get("filters")
    if not isinstance(filters, list) or not any(_mirrors_to(f, service) for f in filters):
        return
    filters[:] = [f for f in filters if not _mirrors_to(f, service)]
    if not filters:
        del rule["filters"]


# --- operations -----------------------------------------------------------------------------

def set_canary_weight(route: dict, canary_weight: int, *, stable: str, canary: str,
                      rule: str | None = None) -> Change:
    """Split the canary rule `100-N` to stable and `N` to canary.

    Both backendRefs stay even at 0/100 so every step has the same shape; a missing one is
    added with the other's port, kind, group and namespace. A rule that also sends to other
    backends is refused: their share of the split is not canarykit's to decide.
    """
    weight = _weight("canary_weight", canary_weight)
    _pair(stable, canary)
    after, target, label = _locate(route, stable, canary, rule)
    _split(target, label, stable, canary, weight)
    params = {"canary_weight": weight, "stable": stable, "canary": canary, "rule": rule}
    return _change("set_canary_weight", params, route, after)


def switch_all_traffic(route: dict, to: str, *, stable: str, canary: str,
                       rule: str | None = None) -> Change:
    """Blue-green switch: weight 100 to `to` and 0 to the other; both backendRefs stay, so
    switching back is one more weight change."""
    _pair(stable, canary)
    if to not in (stable, canary):
        raise BadInput("to", to, f"must be the stable ({stable}) or the canary ({canary}) "
                       "Service")
    after, target, label = _locate(route, stable, canary, rule)
    _split(target, label, stable, canary, 100 if to == canary else 0)
    params = {"to": to, "stable": stable, "canary": canary, "rule": rule}
    return _change("switch_all_traffic", params, route, after)


def _conditions(field: str, items: Any, max_value: int) -> list[dict]:
    """Header or query parameter matches `[{name, value, type}]`, checked, type made explicit."""
    if items is None:
        return []
    if not isinstance(items, list | tuple) or not items:
        raise BadInput(field, items, "must be a non-empty list of {name, value, type} mappings")
    checked = []
    for item in items:
        if not isinstance(item, dict) or not set(item) <= {"name", "value", "type"}:
            raise BadInput(field, item, "each must be a mapping of name, value and type "
                           "(Exact or RegularExpression)")
        name, value, kind = item.get("name"), item.get("value"), item.get("type", "Exact")
        if not is_header_name(name) or len(name) > 256:
            raise BadInput(field, name, "name must be an HTTP token (letters, digits and "
                           "!#$%&'*+-.^_`|~), at most 256 characters")
        if kind not in MATCH_TYPES:
            raise BadInput(field, kind, "type must be Exact or RegularExpression")
        if not isinstance(value, str) or not value or len(value) > max_value:
            raise BadInput(field, value, f"value must be a non-empty string of at most "
                           f"{max_value} characters")
        if kind == "RegularExpression":
            _regex(field, value)
        checked.append({"type": kind, "name": name, "value": value})
    return checked


def _cookie_condition(cookie: Any) -> dict:
    if not isinstance(cookie, tuple | list) or len(cookie) != 2:
        raise BadInput("cookie", cookie, "must be (name, value), value None for any value")
    try:
        pattern = cookie_regex(*cookie)
    except BadInput as err:
        raise BadInput("cookie", err.value, err.problem) from None
    return {"type": "RegularExpression", "name": "cookie", "value": pattern}


def _extend(match: dict, key: str, added: list[dict], field: str, label: str,
            fold_case: bool) -> None:
    """Add conditions to a copied match, refusing a name it already matches on: Gateway API
    honours only the first condition of a name, so the new one would be ignored."""
    if not added:
        return
    current = match.get(key) if isinstance(match.get(key), list) else []
    known = {c.get("name") for c in current if isinstance(c, dict)}
    if fold_case:
        known = {n.lower() for n in known if isinstance(n, str)}
    for condition in added:
        name = condition["name"].lower() if fold_case else condition["name"]
        if name in known:
            raise BadInput(field, condition["name"], f"{label} already matches on it, and "
                           "Gateway API uses only the first match of a name")
    if len(current) + len(added) > MAX_CONDITIONS:
        raise BadInput(field, len(added), f"{label} would match more than {MAX_CONDITIONS} "
                       f"{key} in one match, the most Gateway API allows")
    match[key] = current + istio.copy_object(added)


def _match_count(rule: dict, grpc: bool) -> int:
    """Matches a rule counts in the route's limit (an HTTPRoute rule without any has one)."""
    if isinstance(rule.get("matches"), list):
        return len(rule["matches"])
    return 0 if grpc else 1


def _match_rule(target: dict, label: str, rule_name: str, matches: list, stable: str,
                canary: str) -> dict:
    """A rule like the canary rule (its filters but mirrors, its timeouts, ...) with these
    matches and one backendRef: canary's own ref (weight dropped), else one like stable's."""
    canary_ref = next((r for r in _backend_refs(target) if _service_name(r) == canary), None)
    backend = {k: istio.copy_object(v) for k, v in canary_ref.items() if k != "weight"} \
        if canary_ref is not None else _new_ref(_template(target, label, stable, canary), canary)
    new_rule: dict = {"name": rule_name, "matches": matches}
    for key, value in target.items():
        if key == "filters" and isinstance(value, list):
            kept = [f for f in value if not (isinstance(f, dict) and f.get("type") == MIRROR)]
            if kept:
                new_rule["filters"] = istio.copy_object(kept)
        elif key not in ("name", "matches", "backendRefs", "filters"):
            new_rule[key] = istio.copy_object(value)
    new_rule["backendRefs"] = [backend]
    return new_rule


def add_match_rule(route: dict, name: str, *, canary: str, stable: str,
                   headers: list[dict] | None = None, query_params: list[dict] | None = None,
                   cookie: tuple[str, str | None] | None = None,
                   rule: str | None = None) -> Change:
    """Internal users first: requests with these headers/query parameters/cookie go to canary.

    The rule is named `canarykit-<name>` (`name` may carry the prefix already). Gateway API
    picks a rule by match specificity, not list order (Exact path, longest prefix, method,
    most header matches, most query matches; ties to the earlier rule). So each match of the
    canary rule (a PathPrefix `/` when it has none) is copied with the new conditions added,
    which makes the new rule strictly more specific for the same requests; it is inserted
    just before the canary rule. It copies the canary rule's other settings (filters except
    mirrors, timeouts) so matched users get the same treatment, and one backendRef, canary.

    Gateway API has no cookie match: `cookie=(name, value)` becomes a RegularExpression match
    on the whole `cookie` header (`traffic.cookie_regex`; value None means any value).
    Headers are `{name, value, type}` with type Exact (default) or RegularExpression. Adding
    the same name again replaces that rule.
    """
    rule_name = _managed_name(name)
    _pair(stable, canary)
    rules(route)
    grpc = route["kind"] == "GRPCRoute"
    if all(value is None for value in (headers, query_params, cookie)):
        raise BadInput("headers", None, "give at least one of headers, query_params, cookie")
    if grpc and query_params is not None:
        raise BadInput("query_params", query_params,
                       "GRPCRoute matches have no query parameters; match on headers")
    added_headers = _conditions("headers", headers, 4096)
    if cookie is not None:
        added_headers.append(_cookie_condition(cookie))
    added_queries = _conditions("query_params", query_params, 1024)
    for field, added, fold_case in (("headers", added_headers, True),
                                    ("query_params", added_queries, False)):
        names = [c["name"].lower() if fold_case else c["name"] for c in added]
        repeated = next((n for n in names if names.count(n) > 1), None)
        if repeated is not None:
            raise BadInput(field, repeated, "is given more than once")
    if rule == rule_name:
        raise BadInput("rule", rule, "is the match rule being added, not the canary rule")
    after = istio.copy_object(route)
    found = rules(after)
    found[:] = [r for r in found if r.get("name") != rule_name]
    index = find_canary_rule(after, stable, canary, rule)
    target, label = found[index], rule_label(after, index)
    matches = target.get("matches") if isinstance(target.get("matches"), list) else []
    matches = istio.copy_object(matches or [{} if grpc else _DEFAULT_HTTP_MATCH])
    for match in matches:
        if not isinstance(match, dict):
            raise BadInput("rule", label, "has a match that is not a mapping")
        _extend(match, "headers", added_headers, "headers", label, fold_case=True)
        _extend(match, "queryParams", added_queries, "query_params", label, fold_case=False)
    if len(found) + 1 > MAX_RULES:
        raise BadInput("name", name, f"{istio.object_ref(route)} already has {len(found)} "
                       f"rules, the most Gateway API allows")
    total = sum(_match_count(r, grpc) for r in found) + len(matches)
    if total > MAX_TOTAL_MATCHES:
        raise BadInput("name", name, f"the route would have {total} matches; Gateway API "
                       f"allows {MAX_TOTAL_MATCHES} across all rules")
    found.insert(index, _match_rule(target, label, rule_name, matches, stable, canary))
    params = {"name": name, "canary": canary, "stable": stable, "headers": headers,
              "query_params": query_params,
              "cookie": list(cookie) if cookie is not None else None, "rule": rule}
    return _change("add_match_rule", params, route, after)


def remove_match_rule(route: dict, name: str) -> Change:
    """Remove the rule canarykit added as `name` (no change when there is none)."""
    rule_name = _managed_name(name)
    rules(route)
    after = istio.copy_object(route)
    found = rules(after)
    found[:] = [r for r in found if r.get("name") != rule_name]
    return _change("remove_match_rule", {"name": name}, route, after)


def _mirror_share(percent: int | float) -> dict:
    """`percent` when whole, else `fraction` (exact to a millionth of a percent)."""
    if isinstance(percent, int):
        return {"percent": percent}
    share = Fraction(percent).limit_denominator(1_000_000) / 100
    return {"fraction": {"numerator": share.numerator, "denominator": share.denominator}}


def set_mirror(route: dict, *, canary: str, stable: str, percent: float,
               rule: str | None = None) -> Change:
    """Mirror (shadow) `percent` of the canary rule's requests to canary.

    A RequestMirror filter to the canary Service on the stable backendRef's port, with
    `percent` when whole, else `fraction`. A mirror to canary already there is replaced in
    place; other filters (mirrors elsewhere, ExtensionRef, ...) stay.
    """
    pct = _percent("percent", percent)
    _pair(stable, canary)
    after, target, label = _locate(route, stable, canary, rule)
    template = _template(target, label, stable, canary)
    if "port" not in template:
        raise BadInput("stable", stable, f"{label}: its backendRef has no port, and a mirror "
                       "to a Service needs one")
    mirror = {"type": MIRROR, "requestMirror": {"backendRef": _new_ref(template, canary),
                                                **_mirror_share(pct)}}
    filters = target.get("filters")
    if filters is not None and not isinstance(filters, list):
        raise BadInput("rule", label, "has filters that are not a list")
    filters = filters if filters is not None else []
    positions = [i for i, f in enumerate(filters) if _mirrors_to(f, canary)]
    if positions:
        filters[positions[0]] = mirror
        for i in reversed(positions[1:]):
            del filters[i]
    else:
        filters.append(mirror)
    target["filters"] = filters
    params = {"canary": canary, "stable": stable, "percent": pct, "rule": rule}
    return _change("set_mirror", params, route, after)


def clear_mirror(route: dict, *, canary: str, stable: str, rule: str | None = None) -> Change:
    """Stop mirroring to canary on the canary rule; mirrors to anything else stay."""
    _pair(stable, canary)
    after, target, _ = _locate(route, stable, canary, rule)
    _drop_mirrors(target, canary)
    return _change("clear_mirror", {"canary": canary, "stable": stable, "rule": rule},
                   route, after)


def _only_rule(route: dict, rule: str | None) -> int:
    """The rule named `rule`, else the route's one rule canarykit did not add."""
    if rule is not None:
        return _rule_index(route, rule)
    found = rules(route)
    own = [i for i, r in enumerate(found) if not _is_managed(r)]
    if len(own) != 1:
        listed = ", ".join(rule_label(route, i) for i in own) or "none"
        raise BadInput("rule", None, f"{istio.object_ref(route)} has {len(own)} rules "
                       f"({listed}); name the rule to use")
    return own[0]


def set_timeouts(route: dict, *, request: str | None = None, backend_request: str | None = None,
                 rule: str | None = None) -> Change:
    """Set a rule's `timeouts` to exactly what is given: None removes that timeout, and both
    None remove `timeouts` altogether (so one call both sets and clears).

    Gateway API durations (`10s`, `1m30s`, `500ms`; `0s` switches a timeout off), and
    backendRequest may not be longer than a request timeout that is on (the CRD's CEL rule).
    The rule is `rule`, else the route's only rule; GRPCRoute has no timeouts.
    """
    rules(route)
    if route["kind"] == "GRPCRoute":
        raise BadInput("timeouts", istio.object_ref(route), "GRPCRoute has no timeouts in "
                       "Gateway API's standard channel (v1.6.1)")
    timeouts: dict[str, str] = {}
    for field, key, value in (("request", "request", request),
                              ("backend_request", "backendRequest", backend_request)):
        if value is not None:
            if duration_seconds(value) is None:
                raise BadInput(field, value, "must be a Gateway API duration such as 10s, 500ms "
                               "or 1m30s (1 to 4 parts of up to 5 digits with h, m, s or ms)")
            timeouts[key] = value
    if len(timeouts) == 2 and duration_seconds(request) != 0 \
            and duration_seconds(backend_request) > duration_seconds(request):
        raise BadInput("backend_request", backend_request,
                       f"must not be longer than the request timeout ({request})")
    after = istio.copy_object(route)
    target = rules(after)[_only_rule(after, rule)]
    if timeouts:
        target["timeouts"] = timeouts
    else:
        target.pop("timeouts", None)
    params = {"request": request, "backend_request": backend_request, "rule": rule}
    return _change("set_timeouts", params, route, after)


def set_retries(route: dict, **anything: Any) -> Change:
    """Always refused: the standard channel has no HTTPRoute retries."""
    raise BadInput("retries", anything, "HTTPRoute retries are not in Gateway API's standard "
                   "channel (v1.6.1); only the experimental channel has rules[].retry; use "
                   "timeouts, or the Istio router")


def promote_change(route: dict, *, stable: str, canary: str, release: str,
                   rule: str | None = None) -> Change:
    """The end of a release: canarykit's match rules go, mirrors to canary on the canary rule
    go, and the canary rule sends 100 % to canary (stable stays at weight 0).

    Foreign rules still sending to stable are left alone: `routes_to(after, stable)` lists them.
    """
    _pair(stable, canary)
    _text("release", release)
    rules(route)
    after = istio.copy_object(route)
    found = rules(after)
    found[:] = [r for r in found if not _is_managed(r)]
    index = find_canary_rule(after, stable, canary, rule)
    target, label = found[index], rule_label(after, index)
    _drop_mirrors(target, canary)
    _split(target, label, stable, canary, 100)
    params = {"stable": stable, "canary": canary, "release": release, "rule": rule}
    return _change("promote", params, route, after)


def move_rules(route: dict, *, stable: str, canary: str) -> Change:
    """Every rule canarykit did not add that still sends to `stable` sends that share to
    `canary` instead (backends merged, weights added)."""
    after = istio.copy_object(route)
    moved = []
    for index, rule in enumerate(rules(after)):
        refs = rule.get("backendRefs") if isinstance(rule.get("backendRefs"), list) else []
        if _is_managed(rule) or not any(_service_name(ref) == stable and _weight_of(ref) > 0
                                        for ref in refs):
            continue
        merged: list[dict] = []
        for ref in refs:
            if _service_name(ref) == stable:
                ref = {**ref, "name": canary}
            same = next((m for m in merged if {**m, "weight": 0} == {**ref, "weight": 0}), None)
            if same is None:
                merged.append(dict(ref))
            else:
                same["weight"] = _weight_of(same) + _weight_of(ref)
        rule["backendRefs"] = merged
        moved.append(rule_label(after, index))
    return _change("move_rules", {"stable": stable, "canary": canary, "moved": moved}, route,
                   after)
