"""What a runbook records, and how the driver and the report read it back.

A runbook ends with `record(result)`: the result dict is displayed as an output with its
own MIME type, so it is saved inside the executed notebook (the audit record) and can be
read back from the .ipynb as plain JSON, with no recording library.
"""

from __future__ import annotations

import enum
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from canarykit.core.errors import BadInput, CanaryKitError
from canarykit.core.names import looks_like_credential, names_a_credential
from canarykit.core.times import timestamp
from canarykit.rollout.redact import strip_userinfo, strip_userinfo_deep

RESULT_MIME = "application/vnd.canarykit.result+json"
MAX_ERROR = 2000  # characters of a failed run's error read back


def check_parameters(parameters: dict[str, Any]) -> dict[str, Any]:
    """Refuse parameters that look like credentials: they would be saved in the notebook.

    The error names the parameter and never repeats the value. Refused inside a runbook that
    the papermill command runs, papermill's output notebook (written with the parameters before
    the first cell ran) is taken care of first, so the refusal leaves no copy on disk
    (`canarykit.rollout.handrun`).
    """
    found = credential_parameters(parameters)
    if found:
        _, field_name, problem = found[0]
        note = _leave_no_copy({name: parameters[name] for name, _, _ in found})
        raise BadInput(field_name, "<hidden>", problem + note)
    return parameters


def credential_parameters(parameters: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(parameter, field to name, problem) for every parameter that is or holds a credential;
    a dict or list parameter is looked into ("prometheus.api_key", "tokens[0]")."""
    found = []
    for name, value in parameters.items():
        problem = _credential_problem(str(name), value)
        if problem:
            found.append((name, *problem))
    return found


def _credential_problem(name: str, value: Any) -> tuple[str, str] | None:
    if looks_like_credential(name):
        return "<a parameter name>", "looks like a credential and would be saved in the notebook"
    if names_a_credential(name) and value:
        return name, ("looks like a credential; pass the name of an environment variable or "
                      f"file instead (e.g. {name}_env)")
    if isinstance(value, str) and looks_like_credential(value):
        return name, "looks like a credential and would be saved in the notebook"
    items = (value.items() if isinstance(value, dict)
             else enumerate(value) if isinstance(value, list | tuple) else ())
    for key, item in items:
        inner = f"{name}.{key}" if isinstance(value, dict) else f"{name}[{key}]"
        problem = _credential_problem(inner, item)
        if problem:
            return problem
    return None


def _leave_no_copy(refused: dict[str, Any]) -> str:
    """Inside a notebook kernel: what happened to the copy papermill may have saved (a note
    for the error). Never lets a failure here hide the refusal itself."""
    kernel_app = sys.modules.get("ipykernel.kernelapp")
    if kernel_app is None or not kernel_app.IPKernelApp.initialized():
        return ""  # not a notebook kernel: nothing was saved before the check
    try:
        from canarykit.rollout import handrun

        return handrun.protect_papermill_output(refused)
    except Exception:  # noqa: BLE001 - the refusal matters more than the note
        return handrun_hint()


def handrun_hint() -> str:
    """What to do about the copy a papermill run may have saved."""
    return ("; if papermill passed it, the notebook papermill wrote holds it: delete it or run "
            "`canarykit runbook scrub NOTEBOOK` (run runbooks with `canarykit runbook run`)")


class Outcome(enum.StrEnum):
    OK = "ok"
    ERROR = "error"


@dataclass
class RunbookResult:
    """What one runbook run did and decided: recorded in its notebook, read back by the driver
    and the report. `outcome` stays ERROR until the runbook reaches its end."""

    runbook: str
    parameters: dict[str, Any]
    started: str = field(default_factory=timestamp)
    finished: str | None = None
    outcome: Outcome = Outcome.ERROR
    error: str | None = None
    release: str = ""
    decision: dict[str, Any] | None = None  # analysis.judges.Decision.to_dict()
    evidence: dict[str, Any] | None = None
    changes: list[dict[str, Any]] = field(default_factory=list)
    weights: dict[str, int] | None = None  # the configured split afterwards
    metrics: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def verdict(self) -> str | None:
        return (self.decision or {}).get("verdict")

    @property
    def reason(self) -> str:
        return (self.decision or {}).get("reason") or ""

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "outcome": self.outcome.value}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunbookResult:
        """A recorded result read back from a notebook (data, not trusted code): fields of the
        wrong type are dropped, unknown ones ignored, an unknown outcome is ERROR."""
        def typed(key: str, kind: type, default: Any) -> Any:
            value = data.get(key)
            return value if isinstance(value, kind) else default

        try:
            outcome = Outcome(data.get("outcome"))
        except ValueError:
            outcome = Outcome.ERROR
        return cls(
            runbook=typed("runbook", str, ""), parameters=typed("parameters", dict, {}),
            started=typed("started", str, ""), finished=typed("finished", str, None),
            outcome=outcome, error=typed("error", str, None), release=typed("release", str, ""),
            decision=typed("decision", dict, None), evidence=typed("evidence", dict, None),
            changes=[c for c in typed("changes", list, []) if isinstance(c, dict)],
            weights=typed("weights", dict, None),
            metrics=[r for r in typed("metrics", list, []) if isinstance(r, dict)],
            notes=[str(n) for n in typed("notes", list, [])])


def error_text(exc: BaseException) -> str:
    """One line for a result's `error`: canarykit's own errors whole (they are written for the
    user), others' first line only (a traceback or a server's body does not belong there)."""
    text = str(exc) if isinstance(exc, CanaryKitError) else (str(exc).splitlines() or [""])[0]
    return f"{type(exc).__name__}: {strip_userinfo(text)[:500]}"


def new_result(runbook: str, parameters: dict[str, Any]) -> RunbookResult:
    """The result every runbook fills in; its parameters are checked for credentials first."""
    return RunbookResult(runbook, check_parameters(dict(parameters)))


def record(result: RunbookResult) -> RunbookResult:
    """Display `result` in the notebook under RESULT_MIME (call once, in the last cell); no
    URL in it keeps its user:password@."""
    from IPython.display import display

    result.finished = result.finished or timestamp()
    data = strip_userinfo_deep(json.loads(json.dumps(result.to_dict(), default=str)))
    summary = f"{result.runbook}: {result.outcome.value}"
    if result.decision:
        summary += f", decision {result.verdict}: {result.reason}"
    display({RESULT_MIME: data, "text/plain": strip_userinfo(summary)}, raw=True)
    return result


def read_notebook(notebook: Path | str) -> tuple[RunbookResult | None, str | None]:
    """(the last result recorded, the error a failed run left) of an executed notebook."""
    try:
        text = Path(notebook).read_text(encoding="utf-8")
    except (OSError, ValueError) as exc:
        raise BadInput("notebook", str(notebook), f"is not a readable notebook ({exc})") from None
    return parse_notebook(text, str(notebook))


def parse_notebook(text: str, where: str) -> tuple[RunbookResult | None, str | None]:
    """`read_notebook` of a notebook's text (`where` names it in errors).

    The result is None if the run never got that far; papermill keeps the traceback of a
    failed run in the notebook, and the error is its first one. Read as JSON: nbformat's
    schema validation would cost seconds of imports and adds nothing to reading outputs.
    Data, not trusted code: outputs of the wrong shape are skipped, and no URL read back keeps
    its user:password@.
    """
    try:
        cells = json.loads(text).get("cells") or []
    except (ValueError, AttributeError, RecursionError) as exc:
        problem = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)[:200]
        raise BadInput("notebook", where, f"is not a readable notebook ({problem})") from None
    found, error = None, None
    for cell in cells if isinstance(cells, list) else []:
        if not isinstance(cell, dict) or cell.get("cell_type") != "code":
            continue
        outputs = cell.get("outputs")
        for output in outputs if isinstance(outputs, list) else []:
            if not isinstance(output, dict):
                continue
            data = output.get("data")
            if isinstance(data, dict) and RESULT_MIME in data:
                found = data[RESULT_MIME]
            if error is None and output.get("output_type") == "error":
                error = strip_userinfo(f"{output.get('ename')}: {output.get('evalue')}")[:MAX_ERROR]
    if not isinstance(found, dict):
        return None, error
    return RunbookResult.from_dict(strip_userinfo_deep(found)), error


def read_result(notebook: Path | str) -> RunbookResult | None:
    """The last result recorded in an executed notebook, or None if it never got that far."""
    return read_notebook(notebook)[0]


def import_papermill() -> ModuleType:
    """papermill, without the seconds jsonschema spends building an IRI grammar at import.

    jsonschema imports `rfc3987_syntax` (when installed, as JupyterLab's extras do) only to
    check the "iri" string format, which notebook schemas never use; marking it absent keeps
    every other check and saves ~3 s on every driver start (measured by
    benchmarks/startup.py).
    """
    if "jsonschema" not in sys.modules:
        sys.modules.setdefault("rfc3987_syntax", None)  # type: ignore[arg-type]
    import papermill

    return papermill
