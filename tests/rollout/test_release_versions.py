"""A release of subsets that are not named after versions (`stable`/`canary` selecting pods
labelled v1/v2): the report colours a subset and its version alike, and the replay export asks
Prometheus for the versions the analyses found, with the plan's metrics section."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from canarykit.rollout import release as releases
from canarykit.rollout import runbook


def _release(evidence: dict | None, plan: str | None = None) -> releases.Release:
    result = runbook.RunbookResult("analyze", {}, evidence=evidence)
    phase = releases.Phase({"name": "analyze-50"}, result, None)
    return releases.Release(Path("."), {"stable": "stable", "canary": "canary"}, [phase], plan)


VERSIONS = {"versions": {"stable": {"subset": "stable", "version": "v1"},
                         "canary": {"subset": "canary", "version": "v2"}}}


def test_the_versions_come_from_the_analyses_else_from_the_subsets_names():
    assert releases.resolved_versions(_release(VERSIONS)) == {"stable": "v1", "canary": "v2"}
    assert releases.resolved_versions(_release(None)) == {"stable": "stable",
                                                          "canary": "canary"}


def test_a_subset_and_its_version_share_a_colour_and_the_roles_differ():
    frames = {"release": pd.DataFrame([{"stable": "stable", "canary": "canary",
                                        "stable_version": "v1", "canary_version": "v2"}]),
              "metrics": pd.DataFrame({"version": ["v1", "v2", "v3"]}),
              "weights": pd.DataFrame({"version": ["stable", "canary"]})}
    colors = releases.version_colors(frames)
    assert colors["stable"] == colors["v1"] != colors["canary"] == colors["v2"]
    assert colors["v3"] not in (colors["v1"], colors["v2"])


def test_the_plans_metrics_section_is_read_from_the_plan_as_run():
    plan = "service: reviews\nmetrics:\n  reporter: source\n  version_label: destination_workload\n"
    assert releases.plan_metrics(_release(VERSIONS, plan)) == {
        "reporter": "source", "version_label": "destination_workload"}
    assert releases.plan_metrics(_release(VERSIONS, "service: reviews\n")) == {}
    assert releases.plan_metrics(_release(VERSIONS, None)) == {}
