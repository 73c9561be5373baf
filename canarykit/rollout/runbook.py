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

RESULT_MIME = "application/vnd.canarykit.result+json"


def check_parameters(parameters: dict[str, Any]) -> dict[str, Any]:
    """Refuse parameters that look like credentials: they would be saved in the notebook.

    The error names the parameter and never repeats the value.
    """
    for name, value in parameters.items():
        if names_a_credential(name) and value:
            raise BadInput(
                name,
                "<hidden>",
                "looks like a credential; pass the name of an environment variable or file "
                f"instead (e.g. {name}_env)",
            )
        if isinstance(value, str) and looks_like_credential(value):
            raise BadInput(
                name, "<hidden>", "looks like a credential and would be saved in the notebook"
            )
        if isinstance(value, dict):
            check_parameters({f"{name}.{k}": v for k, v in value.items()})
        if isinstance(value, list | tuple):
            check_parameters({f"{name}[{i}]": v for i, v in enumerate(value)})
    return parameters


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
    return f"{type(exc).__name__}: {text[:500]}"


def new_result(runbook: str, parameters: dict[str, Any]) -> RunbookResult:
    """The result every runbook fills in; its parameters are checked for credentials first."""
    return RunbookResult(runbook, check_parameters(dict(parameters)))


def record(result: RunbookResult) -> RunbookResult:
    """Display `result` in the notebook under RESULT_MIME (call once, in the last cell)."""
    from IPython.display import display

    result.finished = result.finished or timestamp()
    data = json.loads(json.dumps(result.to_dict(), default=str))
    summary = f"{result.runbook}: {result.outcome.value}"
    if result.decision:
        summary += f", decision {result.verdict}: {result.reason}"
    display({RESULT_MIME: data, "text/plain": summary}, raw=True)
    return result


def read_notebook(notebook: Path | str) -> tuple[RunbookResult | None, str | None]:
    """(the last result recorded, the error a failed run left) of an executed notebook.

    The result is None if the run never got that far; papermill keeps the traceback of a
    failed run in the notebook, and the error is its first one. Read as JSON: nbformat's
    schema validation would cost seconds of imports and adds nothing to reading outputs.
    """
    try:
        cells = json.loads(Path(notebook).read_text(encoding="utf-8")).get("cells") or []
    except (OSError, ValueError, AttributeError) as exc:
        raise BadInput("notebook", str(notebook), f"is not a readable notebook ({exc})") from None
    found, error = None, None
    for cell in cells:
        for output in cell.get("outputs") or [] if cell.get("cell_type") == "code" else []:
            if RESULT_MIME in (output.get("data") or {}):
                found = output["data"][RESULT_MIME]
            if error is None and output.get("output_type") == "error":
                error = f"{output.get('ename')}: {output.get('evalue')}"
    return (RunbookResult.from_dict(found) if isinstance(found, dict) else None), error


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
