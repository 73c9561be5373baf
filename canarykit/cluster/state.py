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
CANARYKIT_ANNOTATIONS = (ROLLOUT_ANNOTATION, AUDIT_HEAD_ANNOTATION)


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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RolloutState:
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)


def new_state(
    stable: str, canary: str, snapshot: dict[str, Any], release: str = ""
) -> RolloutState:
    started = times.utc_now()
    return RolloutState(
        stable=stable,
        canary=canary,
        release=release or f"{canary}-{times.compact(started)}",
        started_at=times.timestamp(started),
        snapshot=copy.deepcopy(snapshot),
    )


def read_state(vs: dict[str, Any]) -> RolloutState | None:
    """The rollout in progress on this VirtualService, or None."""
    raw = (vs.get("metadata", {}).get("annotations") or {}).get(ROLLOUT_ANNOTATION)
    if not raw:
        return None
    try:
        return RolloutState.from_dict(json.loads(raw))
    except (json.JSONDecodeError, TypeError) as exc:
        raise BadInput(
            f"metadata.annotations[{ROLLOUT_ANNOTATION}]", raw[:80], f"is not rollout state: {exc}"
        ) from exc


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


def canarykit_annotations(obj: dict[str, Any]) -> dict[str, str]:
    annotations = obj.get("metadata", {}).get("annotations") or {}
    return {k: annotations[k] for k in CANARYKIT_ANNOTATIONS if k in annotations}
