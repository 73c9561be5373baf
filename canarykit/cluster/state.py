"""Rollout state kept in the cluster, as an annotation on the VirtualService.

Keeping it in the cluster (not on the runner's disk) lets any runner on any machine
continue a rollout, and the pre-rollout snapshot travels with the object it restores.
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from canarykit.core import times
from canarykit.core.errors import BadInput

ROLLOUT_ANNOTATION = "canarykit.io/rollout"
AUDIT_HEAD_ANNOTATION = "canarykit.io/audit-head"
# The last promotion (release, old and new version), so `status` can list routes still on the
# old version after the rollout state is gone.
PROMOTED_ANNOTATION = "canarykit.io/promoted"
CANARYKIT_ANNOTATIONS = (ROLLOUT_ANNOTATION, AUDIT_HEAD_ANNOTATION, PROMOTED_ANNOTATION)


@dataclass
class RolloutState:
    stable: str
    canary: str
    release: str
    started_at: str
    step: int = 0
    phase: str = "started"
    snapshot: dict[str, Any] = field(default_factory=dict)
    """Managed fields before the rollout: {"virtualService": {...}, "destinationRule": {...}}."""
    history: list[dict[str, Any]] = field(default_factory=list)
    routes: list[str] = field(default_factory=list)  # moving together; [] = the canary route

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if not self.routes:
            del out["routes"]  # as a state written before routes moved together
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RolloutState:
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)


def new_state(
    stable: str, canary: str, snapshot: dict[str, Any], release: str = "",
    routes: tuple[str, ...] = (),
) -> RolloutState:
    started = times.utc_now()
    return RolloutState(
        stable=stable,
        canary=canary,
        release=release or f"{canary}-{times.compact(started)}",
        started_at=times.timestamp(started),
        snapshot=copy.deepcopy(snapshot),
        routes=list(routes),
    )


MAX_STATE_CHARS = 1024 * 1024  # far above any real state; an annotation is at most 256 KiB
_FIELD = f"metadata.annotations[{ROLLOUT_ANNOTATION}]"
_REQUIRED = {"stable": str, "canary": str, "release": str, "started_at": str, "snapshot": dict}
_OPTIONAL = {"step": int, "phase": str, "history": list, "routes": list}
# What rollback restores, by the kind that carries the state: a VirtualService's own managed
# fields and its DestinationRule's; a Gateway API route's rules.
_SNAPSHOT = {"VirtualService": ("virtualService", "destinationRule"),
             "HTTPRoute": ("route",), "GRPCRoute": ("route",)}


def read_state(vs: dict[str, Any]) -> RolloutState | None:
    """The rollout in progress on this VirtualService (or Gateway API route), or None.

    The annotation is checked whole (fields, their types, the snapshot rollback restores):
    anyone who can edit the object can write it, and a rollback must not stop half way on a
    state it cannot use.
    """
    raw = (vs.get("metadata", {}).get("annotations") or {}).get(ROLLOUT_ANNOTATION)
    if not raw:
        return None
    if not isinstance(raw, str) or len(raw) > MAX_STATE_CHARS:
        raise BadInput(_FIELD, f"{type(raw).__name__} of {len(str(raw)):,} characters",
                       "is not rollout state")
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        raise BadInput(_FIELD, raw[:80], "is not rollout state: not JSON") from None
    if not isinstance(data, dict):
        raise BadInput(_FIELD, raw[:80], "is not rollout state: not a JSON object")
    for name, kind in {**_REQUIRED, **_OPTIONAL}.items():
        if name not in data:
            if name in _REQUIRED:
                raise BadInput(f"{_FIELD}.{name}", "(missing)",
                               "is missing: the rollout state is incomplete; fix or remove "
                               "the annotation")
            continue
        value = data[name]
        if not isinstance(value, kind) or isinstance(value, bool):
            raise BadInput(f"{_FIELD}.{name}", str(value)[:80],
                           f"must be a {'number' if kind is int else kind.__name__}")
    for name in _SNAPSHOT.get(vs.get("kind", ""), _SNAPSHOT["VirtualService"]):
        if not isinstance(data["snapshot"].get(name), dict):
            raise BadInput(f"{_FIELD}.snapshot.{name}", "(missing)" if name not in
                           data["snapshot"] else str(data["snapshot"][name])[:80],
                           "must be the managed fields rollback restores (a mapping)")
    name = data["snapshot"].get("destinationRuleName")
    if name is not None and not isinstance(name, str):
        raise BadInput(f"{_FIELD}.snapshot.destinationRuleName", str(name)[:80],
                       "must be the DestinationRule's name")
    return RolloutState.from_dict(data)


def with_annotation(obj: dict[str, Any], key: str, value: str | None) -> dict[str, Any]:
    """A copy of `obj` with annotation `key` set to `value` (removed when None)."""
    out = copy.deepcopy(obj)
    annotations = dict(out.setdefault("metadata", {}).get("annotations") or {})
    if value is None:
        annotations.pop(key, None)
    else:
        annotations[key] = value
    if annotations:
        out["metadata"]["annotations"] = annotations
    else:
        out["metadata"].pop("annotations", None)
    return out


def with_state(vs: dict[str, Any], state: RolloutState | None) -> dict[str, Any]:
    """A copy of the VirtualService carrying `state` (or none, when the rollout is over)."""
    value = None if state is None else json.dumps(state.to_dict())
    return with_annotation(vs, ROLLOUT_ANNOTATION, value)


def with_promotion(obj: dict[str, Any], release: str, old: str, new: str) -> dict[str, Any]:
    """A copy of the routing object recording that `release` made `new` the stable version."""
    value = json.dumps({"release": release, "from": old, "to": new}, sort_keys=True)
    return with_annotation(obj, PROMOTED_ANNOTATION, value)


def read_promotion(obj: dict[str, Any]) -> dict[str, str] | None:
    """The last promotion recorded on the object ({release, from, to}), or None."""
    text = (obj.get("metadata", {}).get("annotations") or {}).get(PROMOTED_ANNOTATION)
    try:
        found = json.loads(text) if isinstance(text, str) else None
    except ValueError:
        return None
    if not isinstance(found, dict) or not all(
            isinstance(found.get(k), str) for k in ("release", "from", "to")):
        return None
    return {k: found[k] for k in ("release", "from", "to")}


def canarykit_annotations(obj: dict[str, Any]) -> dict[str, str]:
    annotations = obj.get("metadata", {}).get("annotations") or {}
    return {k: annotations[k] for k in CANARYKIT_ANNOTATIONS if k in annotations}
