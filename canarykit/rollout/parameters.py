"""Each runbook's parameters, declared once: name, type, default and help.

The notebooks' `parameters` cells and the "## Parameters" lists of their first markdown cells
are rendered from these declarations (`python -m canarykit.rollout.parameters --write`
rewrites them; tests/rollout/test_parameters.py fails when one differs). The analysis
parameters of the analyze and shadow runbooks come from `AnalysisSettings`, so a runbook, a
plan and `canarykit analyze` cannot disagree on a default.
"""

from __future__ import annotations

import importlib.resources
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from canarykit.analysis.settings import CLI, RUNBOOK, AnalysisSettings, setting_help, setting_names
from canarykit.core.errors import BadInput
from canarykit.rollout import runbook


def packaged_runbooks() -> Path:
    """The runbooks installed with canarykit (package data), wherever it is installed."""
    return Path(str(importlib.resources.files("canarykit") / "runbooks"))


@dataclass(frozen=True)
class Parameter:
    name: str
    type: str  # the annotation in the parameters cell: str, int, float or bool
    default: Any
    help: str

    def literal(self) -> str:
        """The default as Python source (strings in double quotes, as papermill shows them)."""
        return json.dumps(self.default) if isinstance(self.default, str) else repr(self.default)


MAX_LISTED = 16  # parameter names an error lists before it says how many there are
COMMON = (
    Parameter("service", "str", "reviews",
              "the service rolled out: NAME, or NAME.NAMESPACE.svc.cluster.local"),
    Parameter("namespace", "str", "",
              "the service's namespace; empty: its FQDN's, else the kubeconfig context's"),
    Parameter("stable", "str", "v1",
              "stable subset of the DestinationRule (its labels give the metrics' version)"),
    Parameter("canary", "str", "v2", "canary subset of the DestinationRule"),
    Parameter("router", "str", "",
              "istio or gateway-api; empty: detected from what routes the service"),
    Parameter("reporter", "str", "destination",
              "Istio reporter of the series read: destination, source or waypoint"),
    Parameter("version_label", "str", "",
              "metrics label telling versions apart; empty: the router's"),
    Parameter("routes", "str", "",
              "routes that move together, comma-separated; empty: the canary route"),
    Parameter("kubeconfig", "str", "",
              "empty: $KUBECONFIG, ~/.kube/config or the in-cluster config (as kubectl)"),
    Parameter("context", "str", "", "kubeconfig context; empty: its current context"),
    Parameter("prometheus_url", "str", "",
              "Prometheus URL; empty: $CANARYKIT_PROMETHEUS_URL (needed for metrics)"),
    Parameter("prometheus_bearer_token_env", "str", "",
              "NAME of an env variable holding the bearer token"),
    Parameter("audit_log", "str", "",
              "audit log path; empty: $CANARYKIT_AUDIT_LOG or reports/audit.jsonl"),
    Parameter("release", "str", "", "release name; empty: the rollout in progress, or a new one"),
)


def _analysis(repeat: bool) -> tuple[Parameter, ...]:
    """The runbook parameters of the analysis settings; without `repeat` only the judging ones
    (those the one-shot CLI takes too), not until_verdict and its timing."""
    defaults = AnalysisSettings()
    judging = setting_names(CLI)
    found = []
    values = defaults.to_dict()
    for name in setting_names(RUNBOOK):
        if repeat or name in judging:
            value = runbook_form(name, values[name])
            found.append(Parameter(name, type(value).__name__, value, setting_help(name)))
    return tuple(found)


def runbook_form(name: str, value: Any) -> Any:
    """An analysis setting as a runbook parameter holds it, text papermill's `-p` can give:
    `metrics` as JSON (empty: none), the judge lists comma-separated."""
    if name == "metrics":
        return json.dumps(value, separators=(",", ":")) if value else ""
    if isinstance(value, list):
        return ",".join(value)
    return value


def _policy() -> tuple[Parameter, ...]:
    """The traffic policy settings (`mesh.policy`) as runbook parameters: "" and -1 leave a
    setting as it is."""
    from canarykit.mesh import policy

    kinds = {"count": ("int", -1), "percent": ("float", -1.0)}
    return tuple(Parameter(s.name, *kinds.get(s.type, ("str", "")), s.help)
                 for s in policy.SETTINGS)


def _setting(name: str) -> Parameter:
    """One analysis setting as a runbook parameter, its default and help from the model."""
    value = getattr(AnalysisSettings(), name)
    return Parameter(name, type(value).__name__, value, setting_help(name))


DECLARED: dict[str, tuple[Parameter, ...]] = {
    "preflight": (
        *COMMON,
        Parameter("min_baseline_success_rate", "float", 99.0,
                  "minimum stable success rate (percent) in baseline_window"),
        Parameter("baseline_window", "str", "1m", "how far back the baseline is measured"),
        _setting("version_label_key"),
    ),
    "internal-canary": (
        *COMMON,
        Parameter("header", "str", "x-canary-user",
                  "request header of internal users; empty: no header route"),
        Parameter("header_value", "str", "true", "its value (or prefix, or RE2 regex)"),
        Parameter("header_match", "str", "exact",
                  "exact, prefix or regex (a query parameter: exact or regex)"),
        Parameter("cookie_name", "str", "beta", "cookie of internal users; empty: no cookie route"),
        Parameter("cookie_value", "str", "true", "its value; empty: any value"),
        Parameter("query_parameter", "str", "",
                  "query parameter of internal users; empty: no query route"),
        Parameter("query_value", "str", "", "its value"),
        Parameter("source_labels", "str", "",
                  "labels of the calling workload: KEY, equals sign, VALUE; comma-separated"),
    ),
    "shadow": (
        *COMMON,
        Parameter("percentage", "float", 10.0, "share of requests mirrored, in percent"),
        *_analysis(repeat=False),
        Parameter("keep_mirror", "bool", False, "keep mirroring after the analysis"),
    ),
    "shift-traffic": (
        *COMMON,
        Parameter("canary_weight", "int", 10, "percent of traffic to the canary, 0-100"),
    ),
    "analyze": (
        *COMMON,
        *_analysis(repeat=True),
        Parameter("canary_weight", "float", -1,
                  "configured canary weight, percent; -1: read it from the VirtualService"),
    ),
    "promote": (*COMMON, Parameter("move_routes", "bool", False,
                                   "move every other route still on the stable version too")),
    "rollback": (*COMMON, Parameter("reason", "str", "",
                                    "why, for the record (e.g. the failed analysis)")),
    "blue-green": (*COMMON, Parameter("to_subset", "str", "v2",
                                      "the subset that gets all traffic")),
    "traffic-policy": (
        *COMMON,
        Parameter("route", "str", "",
                  "VirtualService http route for timeout, retries, fault; empty: the canary's"),
        Parameter("subset", "str", "",
                  "DestinationRule subset for affinity, outlier, pool; empty: top level"),
        *_policy(),
        Parameter("clear", "str", "",
                  "groups removed first: timeout,retries,fault,affinity,outlier,pool"),
        Parameter("dry_run", "bool", False, "ask the server, change nothing"),
    ),
    "post-rollout-analysis": (
        Parameter("service", "str", "reviews", "the service whose newest release is loaded"),
        Parameter("reports", "str", "reports", "the report folder root"),
        Parameter("release_folder", "str", "",
                  "a release folder; empty: the newest under REPORTS/SERVICE/"),
    ),
}
RUNBOOK_PARAMETERS: dict[str, tuple[str, ...]] = {
    name: tuple(p.name for p in declared) for name, declared in DECLARED.items()
}
# Variables the runbooks themselves define after their parameters (not parameters).
_RUNBOOK_VARIABLES = {"result", "target", "decision", "frames", "figure", "parameters",
                      "_before_parameters"}  # what the runbooks bind themselves


def own_values(runbook_name: str, namespace: dict[str, Any]) -> dict[str, Any]:
    """The runbook's own parameters (not the COMMON connection ones) as the notebook holds
    them, for a phase that takes many settings by name."""
    common = {p.name for p in COMMON}
    return {p.name: namespace[p.name] for p in DECLARED[runbook_name] if p.name not in common}


def default(runbook_name: str, name: str) -> Any:
    """The declared default of one runbook parameter."""
    return next(p.default for p in DECLARED[runbook_name] if p.name == name)


# ---------------------------------------------------------------- a run's parameters


# The names Python and IPython bind in every kernel (dunders such as the `__annotations__` a
# typed parameters cell creates, output and input history, directories); any other new name
# is a parameter, an underscore in front or not.
_IPYTHON_NAME = re.compile(r"_+|__\w+__|_i+|_i?\d+|_(?:oh|ih|dh|sh|exit_code)|In|Out")


def given_parameters(runbook_name: str, namespace: dict[str, Any],
                     before: set[str]) -> dict[str, Any]:
    """The parameters a run was given: names bound since `before` (the parameters cell and the
    cell papermill injects). Credential-looking and unknown names are refused, so a typo or a
    secret passed as a parameter stops the run before anything is changed."""
    if runbook_name not in RUNBOOK_PARAMETERS:
        raise BadInput("runbook", runbook_name,
                       "is not a runbook (known: " + ", ".join(RUNBOOK_PARAMETERS) + ")")
    given = {
        name: value for name, value in namespace.items()
        if name not in before and not _IPYTHON_NAME.fullmatch(name)
        and name not in _RUNBOOK_VARIABLES and not callable(value)
        and type(value).__name__ != "module"
    }
    runbook.check_parameters(given)
    known = RUNBOOK_PARAMETERS[runbook_name]
    for name in sorted(set(given) - set(known)):
        shown = given[name]
        if isinstance(shown, str) and len(shown) > 80:
            shown = shown[:80] + "..."
        listed = ", ".join(known[:MAX_LISTED]) + (
            f", ... ({len(known)} in all: the notebook's parameters cell)"
            if len(known) > MAX_LISTED else "")
        raise BadInput(name, shown, f"is not a parameter of the {runbook_name} runbook "
                       f"(parameters: {listed})")
    return {name: given[name] for name in known if name in given}


def _analysis_names(runbook_name: str) -> list[str]:
    names = set(setting_names())
    return [name for name in RUNBOOK_PARAMETERS[runbook_name] if name in names
            and not (runbook_name == "analyze" and name == "canary_weight")]


def analysis_settings(runbook_name: str, given: dict[str, Any]) -> AnalysisSettings:
    """The analysis settings among a run's parameters (the rest at their defaults), checked."""
    names = _analysis_names(runbook_name)
    return AnalysisSettings.from_dict({k: v for k, v in given.items() if k in names})


def analysis_values(runbook_name: str, settings: AnalysisSettings) -> dict[str, Any]:
    """`settings` as the runbook's parameters (`runbook_form`)."""
    values = settings.to_dict()
    return {name: runbook_form(name, values[name]) for name in _analysis_names(runbook_name)}


# ---------------------------------------------------------------- the notebooks


def parameters_cell(runbook_name: str) -> str:
    """The source of the runbook's `parameters` cell."""
    return "\n".join(f"{p.name}: {p.type} = {p.literal()}  # {p.help}"
                     for p in DECLARED[runbook_name])


def parameter_list(runbook_name: str) -> str:
    """The markdown bullet list under "## Parameters"."""
    return "\n".join(f"- `{p.name}` ({p.type}, default `{p.literal()}`): {p.help}"
                     for p in DECLARED[runbook_name])


def _with_list(text: str, runbook_name: str) -> str:
    head, marker, rest = text.partition("## Parameters\n\n")
    if not marker:
        raise BadInput("runbook", runbook_name, "has no '## Parameters' in its first cell")
    lines = rest.split("\n")
    count = next((i for i, line in enumerate(lines) if not line.startswith("- ")), len(lines))
    return head + marker + "\n".join([parameter_list(runbook_name), *lines[count:]])


def _source(cell: dict[str, Any]) -> str:
    source = cell["source"]
    return source if isinstance(source, str) else "".join(source)


def rendered(notebook: dict[str, Any], runbook_name: str) -> dict[str, Any]:
    """The notebook (nbformat 4 JSON) with its parameter list and parameters cell rendered
    from the declaration; every other cell as it was."""
    cells = []
    for index, cell in enumerate(notebook["cells"]):
        text = _source(cell)
        if index == 0 and cell["cell_type"] == "markdown":
            text = _with_list(text, runbook_name)
        elif "parameters" in cell.get("metadata", {}).get("tags", []):
            text = parameters_cell(runbook_name)
        cells.append({**cell, "source": text.splitlines(keepends=True)})
    return {**notebook, "cells": cells}


def notebook_text(notebook: dict[str, Any]) -> str:
    """As nbformat writes a notebook: sorted keys, one-space indent."""
    return json.dumps(notebook, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def stale_runbooks(folder: Path | None = None, *, write: bool = False) -> list[str]:
    """The runbooks (default: the packaged ones) whose notebook differs from its declaration
    (rewritten with `write`)."""
    folder = folder or packaged_runbooks()
    stale = []
    for name in DECLARED:
        path = folder / f"{name}.ipynb"
        text = path.read_text(encoding="utf-8")
        wanted = notebook_text(rendered(json.loads(text), name))
        if wanted != text:
            stale.append(name)
            if write:
                path.write_text(wanted, encoding="utf-8")
    return stale


if __name__ == "__main__":
    rewrite = sys.argv[1:] == ["--write"]
    changed = stale_runbooks(write=rewrite)
    print(("rewrote: " if rewrite else "differ from their declaration: ")
          + (", ".join(changed) or "none"))
    sys.exit(1 if changed and not rewrite else 0)
