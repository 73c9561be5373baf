"""Which version a DestinationRule subset is, as Istio's metrics name it.

A subset's name is the user's (`stable`, `canary`); the metrics' `destination_version` is the
pod's canonical revision, which Istio takes from the pod's `service.istio.io/canonical-revision`
label, else `app.kubernetes.io/version`, else `version`. The subset's labels select the pods,
so they say which value the metrics carry. Only a subset with none of those labels falls back
to its own name, and says so.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from canarykit.core.errors import BadInput
from canarykit.core.names import is_label_key, is_label_value

# Istio's precedence for a pod's canonical revision (destination_version in its metrics).
VERSION_LABEL_KEYS = ("service.istio.io/canonical-revision", "app.kubernetes.io/version",
                      "version")


@dataclass(frozen=True)
class SubsetVersion:
    """A subset and the version value its pods report in the metrics."""

    subset: str
    version: str
    label: str  # the subset label the version was read from; "" when the name stands in

    def describe(self, role: str) -> str:
        """E.g. "canary subset `canary` (version v2)", for judges and reports."""
        text = f"{role} subset `{self.subset}` (version {self.version}"
        if not self.label:
            text += ", no version label on the subset: its name stands in"
        return text + ")"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_label_key(field_name: str, value: Any) -> str:
    """An empty key (Istio's precedence) or a Kubernetes label key."""
    if value != "" and not is_label_key(value):
        raise BadInput(field_name, value, "must be a Kubernetes label key such as version or "
                       "app.kubernetes.io/version (empty: " + ", else ".join(VERSION_LABEL_KEYS)
                       + ")")
    return value


def subset_labels(dr: dict[str, Any], subset: str) -> dict[str, Any] | None:
    """The labels of one subset of the DestinationRule, None when it has no such subset."""
    for item in (dr.get("spec") or {}).get("subsets") or []:
        if isinstance(item, dict) and item.get("name") == subset:
            labels = item.get("labels")
            return labels if isinstance(labels, dict) else {}
    return None


def subset_version(dr: dict[str, Any], subset: str, label_key: str = "") -> SubsetVersion:
    """The version value of `subset`'s pods: from `label_key` when given, else by Istio's
    precedence; the subset's name when it carries none of them (or is not defined: preflight
    reports that)."""
    labels = subset_labels(dr, subset) or {}
    for key in (label_key,) if label_key else VERSION_LABEL_KEYS:
        value = labels.get(key)
        if is_label_value(value):
            return SubsetVersion(subset, value, key)
    return SubsetVersion(subset, subset, "")


def subset_versions(dr: dict[str, Any], stable: str, canary: str,
                    label_key: str = "") -> tuple[SubsetVersion, SubsetVersion]:
    """The stable and canary subsets' versions; refused when the metrics could not tell them
    apart (both subsets' pods report the same version)."""
    check_label_key("version_label_key", label_key)
    found = subset_version(dr, stable, label_key), subset_version(dr, canary, label_key)
    if found[0].version == found[1].version:
        raise BadInput("version_label_key", label_key or ", ".join(VERSION_LABEL_KEYS),
                       f"gives both {found[0].describe('stable')} and "
                       f"{found[1].describe('canary')} the same version: the metrics cannot "
                       "tell them apart; name the label that differs")
    return found
