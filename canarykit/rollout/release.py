"""A past release folder read back: one reader and one set of charts for the HTML report and
the post-rollout notebook, so both show the same phases, numbers and figures.

`read_release` reads what a release left behind (release.json, the executed notebooks' results,
plan.yaml); `release_frames` turns that into pandas frames, `release_figures` draws them.
pandas and plotly are imported only by the functions that need them:
`canarykit report` imports this module to set up its arguments and should start quickly.
"""

from __future__ import annotations

import csv
import errno
import html
import io
import json
import math
import os
import stat
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from canarykit.cluster import audit
from canarykit.core import names, times
from canarykit.core.errors import BadInput, CanaryKitError
from canarykit.core.files import write_atomically
from canarykit.rollout import redact, runbook
from canarykit.storage import records

if TYPE_CHECKING:
    import pandas as pd
    import plotly.graph_objects as go

    from canarykit.analysis import metrics as m
    from canarykit.analysis.settings import AnalysisSettings
    from canarykit.rollout.phases import WeightPeriod

SEQUENTIAL_JUDGE = "error-rate-sequential"
COLORS = ("#1f6fb2", "#e4760b", "#2e9b5b", "#8a4fbf", "#c23b3b", "#6b6b6b")
LATENCY_DASH = {"latency-p50": "dot", "latency-p90": "dash", "latency-p99": "solid"}
VERDICT_COLORS = {"PASS": COLORS[2], "FAIL": COLORS[4]}
INCONCLUSIVE_COLOR = "#8a5a00"
SUMMARY_FIELDS = ("service", "namespace", "release", "stable", "canary", "status", "reason",
                  "started", "finished")
# beside the summary: the versions the metrics carry (`resolved_versions`)
VERSION_FIELDS = ("stable_version", "canary_version")
PHASE_FIELDS = ("index", "name", "runbook", "notebook", "started", "finished", "recorded",
                "error", "decision", "decision_reason", "weights", "notes")
DECISION_FIELDS = ("phase", "notebook", "finished", "decision", "decision_reason", "judge",
                   "verdict", "reason", "critical", "required", "p_value", "bayes_factor",
                   "values", "thresholds", "dry_run")
CUSTOM_PREFIX = "metric:"  # the judges and metric rows of the plan's custom PromQL metrics
DRY_RUN = "dry-run (does not decide)"
CHANGE_FIELDS = ("operation", "target", "changed", "params", "resourceVersion", "auditHash",
                 "diff")


# ---------------------------------------------------------------- reading the folder

# What a release folder may hold; beyond these a file or a field is refused, not read.
MAX_RELEASE_JSON = 16 * 1024 * 1024
MAX_NOTEBOOK = 64 * 1024 * 1024
MAX_PLAN = 1024 * 1024
MAX_LOG = 64 * 1024 * 1024  # audit.jsonl, notifications.jsonl
MAX_TEXT = 10_000  # characters of one text field of release.json
MAX_PHASES = 10_000
MAX_INDEX = 1_000_000
MAX_NAME = 255
RELEASE_JSON, PLAN_YAML, AUDIT_LOG = "release.json", "plan.yaml", "audit.jsonl"
SUMMARY_TEXT = ("service", "namespace", "release", "stable", "canary", "status", "reason")
PHASE_TEXT = ("name", "runbook", "outcome", "verdict", "actor", "runner", "gate", "reason",
              "error")
TIME_FIELDS = ("started", "finished")
LATEST_UNIX = 253_402_300_799  # 9999-12-31T23:59:59Z


@dataclass
class Phase:
    """One phase: the driver's entry in release.json plus what its notebook recorded."""

    entry: dict[str, Any]
    result: runbook.RunbookResult | None
    error: str | None
    notebook_read: bool = False  # its notebook is a file of the release folder, and was read

    def get(self, key: str) -> Any:
        """A field from release.json's entry, else from the recorded result."""
        value = self.entry.get(key)
        return value if value is not None else getattr(self.result, key, None)

    @property
    def label(self) -> str:
        return f"{self.entry.get('index', '?')}. {self.entry.get('name', '?')}"

    @property
    def decision(self) -> dict[str, Any] | None:
        return self.result.decision if self.result else None

    @property
    def iterations(self) -> list[dict[str, Any]]:
        """The checks of an analysis of several iterations (each with its verdict and the
        failed checks so far); [] for one check or anything else recorded there."""
        evidence = self.result.evidence if self.result else None
        found = evidence.get("iterations") if isinstance(evidence, dict) else None
        return [item for item in found if isinstance(item, dict)] \
            if isinstance(found, list) else []

    @property
    def threshold(self) -> Any:
        evidence = self.result.evidence if self.result else None
        return evidence.get("threshold") if isinstance(evidence, dict) else None


@dataclass
class Release:
    """Everything a release folder holds, as plain data; no URL in it keeps its userinfo."""

    folder: Path
    summary: dict[str, Any]  # release.json; empty when the driver never wrote it
    phases: list[Phase]
    plan: str | None  # plan.yaml as run, None when missing
    notifications: list[dict[str, Any]] = field(default_factory=list)  # the delivery log
    plan_source: str | None = field(default=None, repr=False)  # plan.yaml as written

    @property
    def webhooks(self) -> list[dict[str, Any]]:
        """What the plan's webhooks answered, in order (release.json)."""
        return [e for e in self.summary.get("webhooks") or [] if isinstance(e, dict)]

    @property
    def approvals(self) -> list[dict[str, Any]]:
        """Who decided at each approve gate, and how."""
        return [{"phase": p.entry.get("name"), **p.entry["approval"]} for p in self.phases
                if isinstance(p.entry.get("approval"), dict)]


def plain_name(field_name: str, value: Any) -> str:
    """`value` if it names a file directly inside the release folder: no folder part, no
    '..', nothing absolute, so a name in release.json can never point elsewhere."""
    if (not isinstance(value, str) or not value or len(value) > MAX_NAME
            or value in (".", "..") or any(c in value for c in "/\\\0")
            or any(ord(c) < 32 for c in value)):
        raise BadInput(field_name, redact.shown(value),
                       "must name a file inside the release folder (no folder, no '..')")
    return value


def read_in_folder(folder: Path, name: str, limit: int) -> str | None:
    """The text of the file `name` directly in `folder`; None when there is none. A symbolic
    link, anything but a regular file, or a file larger than `limit` is refused: what a
    release folder shows must come from inside it."""
    path = folder / plain_name("release folder", name)
    flags = (os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
             | getattr(os, "O_CLOEXEC", 0))
    try:
        if path.is_symlink():  # O_NOFOLLOW refuses it too, where there is one
            raise OSError(errno.ELOOP, "symbolic link")
        descriptor = os.open(path, flags)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP or path.is_symlink():
            raise BadInput(name, "a symbolic link", "is refused: only regular files inside "
                           "the release folder are read") from None
        raise BadInput(name, str(folder), f"cannot be read ({exc.strerror})") from None
    with os.fdopen(descriptor, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise BadInput(name, "not a regular file", "is refused: only regular files "
                           "inside the release folder are read")
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise BadInput(name, f"more than {limit:,} bytes", "is too large to read")
    return data.decode("utf-8", errors="replace")


def check_output(path: Path, field_name: str) -> Path:
    """Refuse to replace a symbolic link or anything but a regular file at `path` (outputs
    are written to a temporary file and renamed over it, never through a link)."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return path
    except OSError as exc:
        raise BadInput(field_name, str(path), f"cannot be checked ({exc.strerror})") from None
    if stat.S_ISLNK(info.st_mode):
        raise BadInput(field_name, str(path), "is a symbolic link: refusing to write there")
    if not stat.S_ISREG(info.st_mode):
        raise BadInput(field_name, str(path), "exists and is not a regular file")
    return path


def find_release(release_folder: str = "", *, reports: str = "reports",
                 service: str = "reviews") -> Path:
    """`release_folder`, or the newest release folder under reports/SERVICE/ (a symbolic
    link there is not a release folder). Either may be a URL in object storage: the release
    is then pulled into a local copy, and that is returned."""
    if records.is_url(release_folder):
        return records.fetch(release_folder)
    if not release_folder and records.is_url(reports):
        service = names.split_service("service", service)[0]  # folders: the short name
        return records.fetch(records.newest_release(records.join(reports, service)))
    if release_folder:
        folder = Path(release_folder)
        if not folder.is_dir():
            raise BadInput("release_folder", redact.shown(release_folder), "is not a folder")
        return folder
    service = names.split_service("service", service)[0]
    root = Path(reports) / service
    found = ([p for p in root.iterdir() if p.is_dir() and not p.is_symlink()]
             if root.is_dir() else [])
    if not found:
        raise BadInput("release_folder", release_folder,
                       f"no release folder under {root}; give one")

    def changed(folder: Path) -> float:
        summary = folder / RELEASE_JSON
        return (summary if summary.exists() else folder).lstat().st_mtime

    return max(found, key=changed)


def read_release(folder: str | Path, *, need_summary: bool = False) -> Release:
    """The release in `folder`; BadInput saying why it is not one.

    Without release.json (the driver died before writing it) the notebooks are still read,
    unless `need_summary`: the report has nothing to head its page with then. Only files
    directly inside the folder are read (never through a symbolic link), release.json is
    checked field by field, and no URL read keeps its user:password@.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise BadInput("release_folder", redact.shown(str(folder)),
                       "is not a release folder: no such directory")
    text = read_in_folder(folder, RELEASE_JSON, MAX_RELEASE_JSON)
    path = folder / RELEASE_JSON
    if text is None:
        if need_summary:
            raise BadInput("release_folder", str(folder),
                           "is not a release folder: it has no release.json")
        summary: dict[str, Any] = {}
    else:
        try:
            loaded = json.loads(text)
        except RecursionError:
            raise BadInput(RELEASE_JSON, str(path), "is nested too deeply") from None
        except ValueError as exc:
            raise BadInput(RELEASE_JSON, str(path),
                           f"is not readable JSON ({str(exc)[:200]})") from None
        summary = check_summary(loaded)
    plan_name = plain_name(f"{RELEASE_JSON} plan", summary.get("plan") or PLAN_YAML)
    plan = read_in_folder(folder, plan_name, MAX_PLAN)
    return Release(
        folder=folder, summary=summary, phases=_read_phases(folder, summary),
        plan=None if plan is None else redact.strip_userinfo(plan),
        notifications=_notification_log(folder, summary), plan_source=plan,
    )


def check_summary(summary: Any) -> dict[str, Any]:
    """release.json, checked: the fields the report and the notebook use have their types and
    sensible sizes (BadInput naming the first that does not), URLs lose their userinfo."""
    if not isinstance(summary, dict):
        raise BadInput(RELEASE_JSON, redact.shown(summary),
                       "must be an object with a list of phases")
    for key in SUMMARY_TEXT:
        _check_text(f"{RELEASE_JSON} {key}", summary.get(key))
    for key in TIME_FIELDS:
        _check_time(f"{RELEASE_JSON} {key}", summary.get(key))
    for key in ("plan", "notifications"):
        if summary.get(key) is not None:
            plain_name(f"{RELEASE_JSON} {key}", summary[key])
    phases = summary.get("phases", [])
    if phases is None:
        phases = []
    if not isinstance(phases, list) or not all(isinstance(e, dict) for e in phases):
        raise BadInput(f"{RELEASE_JSON} phases", redact.shown(phases),
                       "must be a list of objects")
    if len(phases) > MAX_PHASES:
        raise BadInput(f"{RELEASE_JSON} phases", f"{len(phases):,} phases",
                       f"is more than {MAX_PHASES:,}")
    for number, entry in enumerate(phases):
        where = f"{RELEASE_JSON} phases[{number}]"
        index = entry.get("index")
        if index is not None and (isinstance(index, bool) or not isinstance(index, int)
                                  or not 0 <= index <= MAX_INDEX):
            raise BadInput(f"{where}.index", redact.shown(index),
                           f"must be a whole number from 0 to {MAX_INDEX:,}")
        for key in PHASE_TEXT:
            _check_text(f"{where}.{key}", entry.get(key))
        for key in TIME_FIELDS:
            _check_time(f"{where}.{key}", entry.get(key))
        if entry.get("notebook") is not None:
            plain_name(f"{where}.notebook", entry["notebook"])
        if entry.get("approval") is not None and not isinstance(entry["approval"], dict):
            raise BadInput(f"{where}.approval", redact.shown(entry["approval"]),
                           "must be an object")
    hooks = summary.get("webhooks")
    if hooks is not None and (not isinstance(hooks, list)
                              or not all(isinstance(e, dict) for e in hooks)):
        raise BadInput(f"{RELEASE_JSON} webhooks", redact.shown(hooks),
                       "must be a list of objects")
    return {**redact.strip_userinfo_deep(summary), "phases": redact.strip_userinfo_deep(phases)}


def _check_text(where: str, value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, str):
        raise BadInput(where, redact.shown(value), "must be text")
    if len(value) > MAX_TEXT:
        raise BadInput(where, f"{len(value):,} characters", f"is longer than {MAX_TEXT:,}")


def _check_time(where: str, value: Any) -> None:
    if value is not None and moment(value) is None:
        raise BadInput(where, redact.shown(value),
                       "must be a time (RFC 3339, e.g. 2024-05-01T12:00:00Z, or Unix seconds)")


def _notification_log(folder: Path, summary: dict[str, Any]) -> list[dict[str, Any]]:
    """The messages the release sent (or failed to), from the log release.json names (a file
    beside it); a line torn by a crash is skipped."""
    name = summary.get("notifications")
    text = read_in_folder(folder, name, MAX_LOG) if name else None
    records = []
    for line in (text or "").splitlines():
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):
            continue
        if isinstance(record, dict):
            records.append(redact.strip_userinfo_deep(record))
    return records


def _read_phases(folder: Path, summary: dict[str, Any]) -> list[Phase]:
    """Each phase of release.json, plus notebooks it does not list (the driver died first)."""
    entries = [dict(e) for e in summary.get("phases") or []]
    listed = {e.get("notebook") for e in entries}
    for path in sorted(folder.glob("[0-9][0-9]-*.ipynb")):
        if path.name not in listed:
            number, _, name = path.stem.partition("-")
            entries.append({"index": int(number), "name": name, "notebook": path.name})
    entries.sort(key=lambda e: (e.get("index") is None, e.get("index") or 0))
    return [_read_phase(folder, entry) for entry in entries]


def _read_phase(folder: Path, entry: dict[str, Any]) -> Phase:
    notebook = entry.get("notebook")
    if not notebook and entry.get("gate"):  # a gate the driver waited at: no notebook runs
        return Phase(entry, None, None)
    if not notebook:
        return Phase(entry, None, "release.json names no notebook for this phase")
    text = read_in_folder(folder, notebook, MAX_NOTEBOOK)
    if text is None:
        return Phase(entry, None, f"notebook {notebook} is missing")
    try:
        result, error = runbook.parse_notebook(text, notebook)
    except BadInput as exc:
        return Phase(entry, None, f"notebook {notebook} is unreadable: {exc.problem}", True)
    if result is None and error is None:
        error = "the run recorded no result (it died before its last cell)"
    if result is not None:
        result.decision = _decision(result.decision)
        if result.error:
            error = result.error[:runbook.MAX_ERROR]
    return Phase(entry, result, error, True)


def _decision(decision: dict[str, Any] | None) -> dict[str, Any] | None:
    """A recorded decision in the shape the report and the frames read: judgements a list of
    objects, their values, thresholds and evidence objects, their queries a list."""
    if decision is None:
        return None
    judgements = decision.get("judgements")
    shaped = []
    for judgement in judgements if isinstance(judgements, list) else []:
        if not isinstance(judgement, dict):
            continue
        queries = judgement.get("queries")
        shaped.append({
            **judgement,
            **{key: judgement.get(key) if isinstance(judgement.get(key), dict) else None
               for key in ("values", "thresholds", "evidence")},
            "queries": [str(q) for q in queries] if isinstance(queries, list) else [],
        })
    return {**decision, "judgements": shaped}


def _audit_log(release: Release) -> Path | None:
    """The release's audit log, if it is a regular file inside the folder (never a link)."""
    path = release.folder / AUDIT_LOG
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(info.st_mode):
        raise BadInput(AUDIT_LOG, "a symbolic link" if stat.S_ISLNK(info.st_mode)
                       else "not a regular file",
                       "is refused: only regular files inside the release folder are read")
    if info.st_size > MAX_LOG:
        raise BadInput(AUDIT_LOG, f"{info.st_size:,} bytes", "is too large to read")
    return path


def audit_check(release: Release) -> dict[str, Any]:
    """The audit chain's verification, against the audit hashes the changes carry."""
    expected = {
        change["auditHash"]
        for phase in release.phases
        for change in (phase.result.changes if phase.result else [])
        if isinstance(change.get("auditHash"), str) and not change.get("dryRun")
    }
    path = _audit_log(release)
    if path is None:
        check = audit.verify_chain(release.folder / AUDIT_LOG, expected_heads=expected)
        return {**check.to_dict(), "expected": len(expected), "entries": []}
    try:
        check = audit.verify_chain(path, expected_heads=expected,
                                   key=audit.hmac_key()).to_dict()
    except (OSError, ValueError, AttributeError, TypeError, RecursionError):
        check = {"ok": False, "records": 0, "problem": "the audit log is not a chain of "
                 "JSON records", "head": None}
    try:
        records = [r for r in audit.read_records(path) if isinstance(r, dict)]
    except (OSError, ValueError, RecursionError):
        records = []
    return {**redact.strip_userinfo_deep(check), "expected": len(expected),
            "entries": redact.strip_userinfo_deep(records)}


def moment(value: Any) -> datetime | None:
    """Unix seconds or an RFC 3339 string as an aware datetime; None if neither."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        if not math.isfinite(value) or not 0 <= value <= LATEST_UNIX:
            return None
        return datetime.fromtimestamp(value, UTC)
    if not isinstance(value, str) or len(value) > 64:
        return None
    try:
        return times.parse_timestamp(value.strip())
    except (ValueError, OverflowError):
        return None


# ---------------------------------------------------------------- frames


def load_release(folder: str | Path) -> dict[str, pd.DataFrame]:
    """A past release as pandas frames (see `release_frames`)."""
    return release_frames(read_release(folder))


def release_frames(release: Release) -> dict[str, pd.DataFrame]:
    """pandas frames: release (one row of release.json), phases, metrics, decisions (one row
    per judgement), changes and weights (the configured split after each phase)."""
    from canarykit.analysis.metrics import FRAME_COLUMNS

    phases, metric_rows, decisions, changes, weights = [], [], [], [], []
    for phase in release.phases:
        result = phase.result or runbook.RunbookResult("", {})
        tag = {"phase": phase.entry.get("name"), "notebook": phase.entry.get("notebook")}
        finished = moment(phase.get("finished"))
        decision = result.decision or {}
        phases.append({**phase.entry, "started": moment(phase.get("started")),
                       "finished": finished, "recorded": phase.result is not None,
                       "error": phase.error, "decision": decision.get("verdict"),
                       "decision_reason": decision.get("reason"),
                       "weights": result.weights, "notes": result.notes})
        for row in result.metrics:
            at, value, version = moment(row.get("timestamp")), row.get("value"), row.get("version")
            if (at and isinstance(value, int | float) and math.isfinite(value)
                    and isinstance(row.get("metric"), str) and isinstance(version, str | int)):
                metric_rows.append({**row, "timestamp": at, "value": float(value),
                                    "version": str(version), **tag})
        for judgement in decision.get("judgements") or []:
            if not isinstance(judgement, dict):
                continue
            evidence = judgement.get("evidence") or {}
            decisions.append({**tag, "finished": finished, "decision": decision.get("verdict"),
                              "decision_reason": decision.get("reason"),
                              "judge": judgement.get("judge"), "verdict": judgement.get("verdict"),
                              "reason": judgement.get("reason"),
                              "critical": judgement.get("critical"),
                              "required": judgement.get("required"),
                              "p_value": evidence.get("p_value"),
                              "bayes_factor": evidence.get("bayes_factor"),
                              "values": judgement.get("values"),
                              "thresholds": judgement.get("thresholds"),
                              "dry_run": judgement.get("dry_run") is True})
        for change in result.changes:
            changes.append({**tag, "finished": finished,
                            **{k: change.get(k) for k in CHANGE_FIELDS}})
        for version, weight in (result.weights or {}).items():
            if finished and isinstance(weight, int | float):
                weights.append({**tag, "timestamp": finished, "version": str(version),
                                "weight": float(weight)})

    summary = {k: release.summary.get(k) for k in SUMMARY_FIELDS}
    summary["started"], summary["finished"] = (moment(summary["started"]),
                                               moment(summary["finished"]))
    versions = resolved_versions(release)
    summary.update({f"{role}_version": versions[role] or None for role in versions})
    metrics = _frame(metric_rows, [*FRAME_COLUMNS, "phase", "notebook"], "timestamp")
    metrics = metrics.drop_duplicates(["timestamp", "version", "metric"], keep="last")
    return {
        "release": _frame([summary], [*SUMMARY_FIELDS, *VERSION_FIELDS], "started",
                          "finished"),
        "phases": _frame(phases, [*PHASE_FIELDS, *(k for row in phases for k in row)],
                         "started", "finished"),
        "metrics": metrics.sort_values(["metric", "version", "timestamp"], ignore_index=True),
        "decisions": _frame(decisions, DECISION_FIELDS, "finished"),
        "changes": _frame(changes, ["phase", "notebook", "finished", *CHANGE_FIELDS],
                          "finished"),
        "weights": _frame(weights, ["phase", "notebook", "timestamp", "version", "weight"],
                          "timestamp"),
    }


def _frame(rows: list[dict[str, Any]], columns: Any, *times_in: str) -> pd.DataFrame:
    """A frame with these columns (also when there are no rows), times as UTC datetimes."""
    import pandas as pd

    table = pd.DataFrame(rows, columns=list(dict.fromkeys(columns)))
    for column in times_in:
        table[column] = pd.to_datetime(table[column], utc=True)
    return table


# ---------------------------------------------------------------- figures


def release_figures(frames: dict[str, pd.DataFrame], *,
                    evidence: bool = False) -> dict[str, go.Figure]:
    """Plotly figures of a loaded release, on one time axis: configured weight vs observed
    traffic share, 5xx rate and latency quantiles per version; with `evidence`, also the
    sequential error-rate test's p-value at each analysis."""
    colors = version_colors(frames)
    figures = {
        "traffic": traffic_figure(frames, colors),
        "errors": errors_figure(frames["metrics"], colors),
        "latency": latency_figure(frames["metrics"], colors),
    }
    if frames["metrics"]["metric"].astype(str).str.startswith(CUSTOM_PREFIX).any():
        figures["custom"] = custom_figure(frames)
    if evidence:
        figures["evidence"] = evidence_figure(frames["decisions"])
    span = _span(frames)
    for figure in figures.values():  # one time axis for all charts, so they line up
        if span and figure.layout.xaxis.visible is not False:
            figure.update_xaxes(range=[times.plot_time(span[0]), times.plot_time(span[1])])
    return figures


def _label(text: Any) -> str:
    """Plotly reads <b>, <br>, <a href> in labels as markup: show a label as written."""
    return html.escape(str(text), quote=False)


def _summary(frames: dict[str, pd.DataFrame]) -> dict[str, Any]:
    table = frames.get("release")
    return table.iloc[0].to_dict() if table is not None and len(table) else {}


def _known(values: Any) -> list[Any]:
    return [v for v in values if v is not None and v == v]  # NaT != NaT


def _span(frames: dict[str, pd.DataFrame]) -> tuple[Any, Any] | None:
    summary = _summary(frames)
    known = _known([summary.get("started"), summary.get("finished"),
                    *frames["metrics"]["timestamp"], *frames["phases"].get("finished", [])])
    return (min(known), max(known)) if known else None


def version_colors(frames: dict[str, pd.DataFrame]) -> dict[str, str]:
    """A fixed color per version: stable first, then canary, then any other. A subset and
    the version its pods carry (`stable` and `v1`) share a color, so the weights (by subset)
    and the metrics (by version) read alike."""
    summary = _summary(frames)
    roles = [[str(summary[k]) for k in (role, f"{role}_version")
              if isinstance(summary.get(k), str) and summary.get(k)]
             for role in ("stable", "canary")]
    others = [*frames["metrics"]["version"].astype(str), *frames["weights"]["version"]]
    groups = [names for names in roles if names]
    groups += [[name] for name in dict.fromkeys(others)
               if not any(name in names for names in groups)]
    return {name: COLORS[i % len(COLORS)] for i, names in enumerate(groups) for name in names}


def _layout(title: str, y_title: str, **extra: Any) -> dict[str, Any]:
    return {
        "title": {"text": _label(title), "x": 0, "font": {"size": 15}},
        "template": "plotly_white", "height": 340,
        "margin": {"l": 60, "r": 20, "t": 45, "b": 40},
        "legend": {"orientation": "h", "y": -0.18},
        "xaxis": {"type": "date"}, "yaxis": {"title": {"text": _label(y_title)}},
        "hovermode": "x unified", **extra,
    }


def _no_data(figure: go.Figure, message: str) -> go.Figure:
    """Say "no data" on the chart itself instead of leaving it out."""
    figure.update_layout(
        xaxis={"visible": False, "type": "linear"}, yaxis={"visible": False},
        annotations=[{"text": _label(f"no data: {message}"), "showarrow": False,
                      "xref": "paper", "yref": "paper", "x": 0.5, "y": 0.5,
                      "font": {"size": 16, "color": "#777"}}],
    )
    return figure


def _series(metrics: pd.DataFrame, metric: str) -> dict[str, pd.DataFrame]:
    """version -> its rows (timestamp, value) of one metric, in time order."""
    rows = metrics[metrics["metric"] == metric].sort_values("timestamp")
    return {str(version): part for version, part in rows.groupby("version", sort=False)}


def traffic_figure(frames: dict[str, pd.DataFrame], colors: dict[str, str]) -> go.Figure:
    """Configured weight (a step at each phase's finish) vs observed traffic share, in %."""
    import plotly.graph_objects as go

    figure = go.Figure(layout=_layout(
        "Configured weight vs observed traffic share", "% of traffic",
        yaxis={"range": [-2, 102], "title": {"text": "% of traffic"}}))
    weights, metrics = frames["weights"].sort_values("timestamp"), frames["metrics"]
    span = _span(frames)
    for version, rows in weights.groupby("version", sort=False):
        x, y = list(rows["timestamp"]), list(rows["weight"])
        if span and span[1] > x[-1]:  # the last weight holds until the release ends
            x, y = [*x, span[1]], [*y, y[-1]]
        figure.add_scatter(x=[times.plot_time(t) for t in x], y=y, mode="lines+markers",
                           line={"shape": "hv", "color": colors.get(version), "width": 3},
                           name=_label(f"{version} configured weight"))
    share = _series(metrics, "traffic-share")
    scale = 100.0 if max((p["value"].max() for p in share.values()), default=0) <= 1 else 1.0
    for version, rows in share.items():
        figure.add_scatter(
            x=[times.plot_time(t) for t in rows["timestamp"]],
            y=[round(v * scale, 3) for v in rows["value"]], mode="lines",
            line={"color": colors.get(version), "width": 1.5, "dash": "dot"},
            name=_label(f"{version} observed share"))
    if not figure.data:
        return _no_data(figure, "no phase recorded weights or traffic-share metrics")
    _mark_decisions(figure, frames["phases"])
    return figure


def _mark_decisions(figure: go.Figure, phases: pd.DataFrame) -> None:
    """A dotted vertical line with the verdict where each analysis decided."""
    if "decision" not in phases:
        return
    for _, phase in phases.iterrows():
        at, verdict = phase.get("finished"), phase.get("decision")
        if not _known([at]) or not isinstance(verdict, str):
            continue
        color, x = VERDICT_COLORS.get(verdict, INCONCLUSIVE_COLOR), times.plot_time(at)
        figure.add_shape(type="line", x0=x, x1=x, y0=0, y1=1, yref="paper",
                         line={"dash": "dot", "color": color, "width": 1})
        figure.add_annotation(x=x, y=1.0, yref="paper", yanchor="bottom",
                              showarrow=False, font={"size": 11, "color": color},
                              text=_label(f"{phase.get('name')}: {verdict}"))


def five_xx(metrics: pd.DataFrame) -> tuple[dict[str, pd.DataFrame], str]:
    """5xx per version (rows of timestamp, value) and the unit: percent of requests when
    success-rate or request-rate was recorded, else 5xx responses per second."""
    success = _series(metrics, "success-rate")
    if success:
        return {v: rows.assign(value=100 * (1 - rows["value"])) for v, rows in success.items()}, \
            "% of requests"
    errors, requests = _series(metrics, "error-rate"), _series(metrics, "request-rate")
    if errors and requests:
        percent = {}
        for version, rows in errors.items():
            total = requests.get(version)
            if total is None:
                continue
            both = rows.merge(total[["timestamp", "value"]], on="timestamp",
                              suffixes=("", "_requests"))
            both = both[both["value_requests"] > 0]
            percent[version] = both.assign(value=100 * both["value"] / both["value_requests"])
        if any(len(rows) for rows in percent.values()):
            return percent, "% of requests"
    return errors, "5xx per second"


def errors_figure(metrics: pd.DataFrame, colors: dict[str, str]) -> go.Figure:
    """The 5xx rate per version over time."""
    import plotly.graph_objects as go

    values, unit = five_xx(metrics)
    figure = go.Figure(layout=_layout("5xx rate per version", unit))
    for version, rows in values.items():
        figure.add_scatter(x=[times.plot_time(t) for t in rows["timestamp"]],
                           y=[round(v, 4) for v in rows["value"]], mode="lines",
                           line={"color": colors.get(version)}, name=_label(version))
    if not figure.data:
        _no_data(figure, "no error-rate or success-rate metrics were recorded")
    return figure


def latency_figure(metrics: pd.DataFrame, colors: dict[str, str]) -> go.Figure:
    """Latency p50 / p90 / p99 per version over time."""
    import plotly.graph_objects as go

    figure = go.Figure(layout=_layout("Latency p50 / p90 / p99 per version", "milliseconds"))
    for metric, dash in LATENCY_DASH.items():
        for version, rows in _series(metrics, metric).items():
            figure.add_scatter(x=[times.plot_time(t) for t in rows["timestamp"]],
                               y=list(rows["value"]), mode="lines",
                               line={"color": colors.get(version), "dash": dash},
                               name=_label(f"{version} {metric.removeprefix('latency-')}"))
    if not figure.data:
        _no_data(figure, "no latency metrics were recorded")
    return figure


def custom_figure(frames: dict[str, pd.DataFrame]) -> go.Figure:
    """The plan's custom PromQL metrics of the canary per interval, each with its limits as
    dotted lines; dry-run ones say so in the legend, since they decide nothing."""
    import plotly.graph_objects as go

    metrics, decisions = frames["metrics"], frames["decisions"]
    figure = go.Figure(layout=_layout("Custom metrics (canary)", "value"))
    names = sorted({str(n) for n in metrics["metric"] if str(n).startswith(CUSTOM_PREFIX)})
    for index, metric in enumerate(names):
        judged = decisions[decisions["judge"] == metric]
        dry = bool(len(judged)) and bool(judged["dry_run"].astype(bool).any())
        label = metric.removeprefix(CUSTOM_PREFIX) + (f" \u2014 {DRY_RUN}" if dry else "")
        color = COLORS[index % len(COLORS)]
        for version, rows in _series(metrics, metric).items():
            x = [times.plot_time(t) for t in rows["timestamp"]]
            figure.add_scatter(x=x, y=list(rows["value"]), mode="lines+markers",
                               line={"color": color, "dash": "dot" if dry else "solid"},
                               name=_label(f"{label} ({version})"))
            limits = judged["thresholds"].iloc[-1] if len(judged) else None
            for bound in ("max_value", "min_value"):
                limit = limits.get(bound) if isinstance(limits, dict) else None
                if isinstance(limit, int | float) and x:
                    figure.add_scatter(x=[x[0], x[-1]], y=[limit, limit], mode="lines",
                                       line={"color": color, "dash": "dot", "width": 1},
                                       name=_label(f"{label} {bound.removesuffix('_value')}"))
    return figure


def evidence_figure(decisions: pd.DataFrame) -> go.Figure:
    """The sequential error-rate test's anytime-valid p-value at each analysis."""
    import plotly.graph_objects as go

    figure = go.Figure(layout=_layout(
        "Sequential error-rate evidence (anytime-valid p-value)", "p-value",
        yaxis={"type": "log", "title": {"text": "p-value (log)"}}, hovermode="closest"))
    points, alphas = [], set()
    for _, row in decisions[decisions["judge"] == SEQUENTIAL_JUDGE].iterrows():
        p_value = row["p_value"]
        if not _known([row["finished"]]) or not isinstance(p_value, int | float) \
                or not p_value > 0:
            continue
        points.append(row)
        alpha = (row["thresholds"] if isinstance(row["thresholds"], dict) else {}).get("alpha")
        if isinstance(alpha, int | float) and alpha > 0:
            alphas.add(float(alpha))
    if not points:
        return _no_data(figure, f"no analysis recorded a {SEQUENTIAL_JUDGE} p-value")
    figure.add_scatter(
        x=[times.plot_time(p["finished"]) for p in points],
        y=[float(p["p_value"]) for p in points],
        mode="lines+markers+text", text=[_label(p["phase"]) for p in points],
        textposition="top center", marker={"size": 10, "color": COLORS[0]}, name="p-value",
        hovertext=[_label(f"{p['phase']}: {p['verdict']} — {p['reason']}") for p in points],
        hoverinfo="text+y",
    )
    for alpha in sorted(alphas):
        figure.add_hline(y=alpha, line={"dash": "dash", "color": COLORS[4]},
                         annotation_text=f"alpha = {alpha:g}")
    return figure


# ---------------------------------------------------------------- the replay export

# Prometheus answers at most 11,000 points per series and query; ask for fewer at a time.
MAX_POINTS_PER_QUERY = 10_000


@dataclass
class ReplayExport:
    """What `export_replay_csv` wrote: the file, its rows and what to know about them."""

    path: Path
    rows: int
    history_rows: int  # the rows before the rollout (canary_share 0): stable's history
    start: float  # Unix seconds: the first period with a canary share (replay's time 0)
    end: float
    latency: bool  # latency bucket columns written
    notes: list[str] = field(default_factory=list)


def replay_periods(release: Release) -> tuple[list[WeightPeriod], str]:
    """The release's periods of constant canary weight, oldest first, and where they come
    from: its audit log's records of the rollout, as `analyze` reads them; without a
    `begin_rollout` record there, the weights each phase recorded, from when it finished."""
    from canarykit.rollout import phases

    stable, canary, name = (_summary_field(release, key) for key in ("stable", "canary",
                                                                       "release"))
    path = _audit_log(release) or release.folder / AUDIT_LOG
    try:
        records = audit.read_records(path) if path.is_file() else []
    except (OSError, ValueError, RecursionError) as exc:
        raise BadInput(AUDIT_LOG, str(path),
                       f"is not a readable audit log ({str(exc)[:200]})") from None
    records = [r for r in records if isinstance(r, dict)]
    begin = next((r for r in reversed(records) if r.get("operation") == "begin_rollout"
                  and isinstance(r.get("params"), dict) and r["params"].get("release") == name),
                 None)
    if begin is not None:
        periods = phases.weight_periods(
            records, virtual_service=str(begin.get("target")),
            namespace=_summary_field(release, "namespace"), stable=stable, canary=canary,
            release=name)
        return periods, f"the audit log's records of release {name}"
    periods = []
    for phase in release.phases:
        weights = phase.result.weights if phase.result else None
        at = moment(phase.get("finished"))
        weight = (weights or {}).get(canary)
        if at is None or not isinstance(weight, int | float):
            continue
        if periods and periods[-1].weight == int(weight):
            continue
        if periods:
            periods[-1].end = at.timestamp()
        periods.append(phases.WeightPeriod(start=at.timestamp(), end=None, weight=int(weight),
                                           share_known=True))
    return periods, (f"the weights the phases recorded when they finished (no begin_rollout "
                     f"record of release {name} in {path.name})")


def _routing_target(release: Release) -> str:
    """The routed object the release's audit log began its rollout on ("" when none), e.g.
    "HTTPRoute default/reviews"."""
    path = _audit_log(release)
    try:
        records = audit.read_records(path) if path is not None else []
    except (OSError, ValueError, RecursionError):
        return ""
    begins = [r.get("target") for r in records if isinstance(r, dict)
              and r.get("operation") == "begin_rollout" and isinstance(r.get("target"), str)]
    return begins[-1] if begins else ""


def resolved_versions(release: Release) -> dict[str, str]:
    """{role: version} as the release's analyses found them on the metrics (a subset
    `stable` may be `version: v1`); the subsets' names when no phase recorded versions."""
    for phase in reversed(release.phases):
        evidence = phase.result.evidence if phase.result else None
        found = evidence.get("versions") if isinstance(evidence, dict) else None
        if isinstance(found, dict) and all(
                isinstance((found.get(role) or {}).get("version"), str)
                for role in ("stable", "canary")):
            return {role: found[role]["version"] for role in ("stable", "canary")}
    return {role: str(release.summary.get(role) or "") for role in ("stable", "canary")}


def plan_metrics(release: Release) -> dict[str, str]:
    """The plan's `metrics:` section as run (reporter, version_label), {} when it has none."""
    from canarykit.core import yamlsafe

    try:
        loaded = yamlsafe.load(release.plan, "plan.yaml") if release.plan else None
    except (BadInput, ValueError):
        return {}
    section = loaded.get("metrics") if isinstance(loaded, dict) else None
    return {k: v for k, v in (section or {}).items()
            if k in ("reporter", "version_label") and isinstance(v, str) and v}


def _summary_field(release: Release, key: str) -> str:
    value = release.summary.get(key)
    if not isinstance(value, str) or not value:
        raise BadInput(f"release.json.{key}", value,
                       f"is needed to export the release's counts ({release.folder})")
    return value


def _release_end(release: Release) -> float:
    """When the release ended: release.json's finished, else its last phase's, else now."""
    ends = [moment(release.summary.get("finished"))]
    if ends[0] is None:
        ends = [moment(phase.get("finished")) for phase in release.phases]
    known = [at.timestamp() for at in ends if at is not None]
    return max(known) if known else time.time()


def _comparable(period: WeightPeriod) -> bool:
    """Both versions get traffic to compare: a weight strictly between 0 and 100, or routes
    for matched users / a mirror whose share is measured instead."""
    return not period.share_known or 0 < period.weight < 100


def _rollout_span(release: Release, periods: list[WeightPeriod]) -> tuple[float, float]:
    """From the first period with a canary share to the last one's end (or to the first
    period with all traffic on the canary: nothing to compare after it)."""
    comparable = [p for p in periods if _comparable(p)]
    if not comparable:
        raise BadInput("release", release.summary.get("release"),
                       "never sent the canary a share of traffic: nothing to replay")
    start = comparable[0].start
    later = [p for p in periods if p.start > start and p.share_known and p.weight >= 100]
    if later:
        end = later[0].start
    else:
        end = comparable[-1].end if comparable[-1].end is not None else _release_end(release)
    return math.ceil(start), min(end, time.time())


def _interval_rows(client: m.Client, selector: m.MetricsSelector, version: str,
                   stamps: list[float], interval: float, latency: bool
                   ) -> tuple[dict[float, tuple[float, float, list[float]]], list[float]]:
    """Per-interval requests, 5xx and per-bucket counts of one version at each stamp."""
    from canarykit.analysis import metrics as m

    found: dict[float, tuple[float, float, list[float]]] = {}
    edges: list[float] = []
    for first in range(0, len(stamps), MAX_POINTS_PER_QUERY):
        chunk = stamps[first:first + MAX_POINTS_PER_QUERY]
        counts = m.interval_counts(client, selector, version, chunk[0], chunk[-1],
                                   step_seconds=interval, with_buckets=latency)
        failed = next((o for o in counts.outcomes if o.status.failed), None)
        if failed is not None:
            raise CanaryKitError(failed.message)
        edges = counts.edges or edges
        for index, stamp in enumerate(counts.times):
            buckets = counts.buckets[index] if counts.buckets else []
            found[round(stamp, 3)] = (counts.requests[index], counts.errors[index], buckets)
    return found, edges


def _shares(stamps: list[float], interval: float, start: float, periods: list[WeightPeriod],
            observed: dict[int, float]) -> list[float]:
    """Each row's canary share: the periods' shares weighted by how much of the interval
    (stamp - interval, stamp] they cover; 0 up to the rollout's start."""
    shares = []
    for stamp in stamps:
        low, high = max(stamp - interval, start), stamp
        total = 0.0
        for index, period in enumerate(periods):
            until = math.inf if period.end is None else period.end
            overlap = min(high, until) - max(low, period.start)
            if overlap > 0 and _comparable(period):
                share = period.weight / 100 if period.share_known else observed[index]
                total += overlap * share
        shares.append(min(round(total / interval, 6), 0.999999))
    return shares


def export_replay_csv(release: Release | str | Path,
                      prometheus: m.PrometheusSettings | m.Client, path: str | Path, *,
                      interval_seconds: float | None = None,
                      history_seconds: float | None = None,
                      latency: bool = True) -> ReplayExport:
    """Write a past release's per-interval counts as a `canarykit replay` file, so a team can
    replay a real incident against other judge settings.

    The rows run from `history_seconds` (default: the analysis' dispersion_history) before the
    first period with a canary share (stable's history, canary_share 0: replay measures the
    dispersion on it) to the end of the last such period, one every `interval_seconds`
    (default: the analysis interval), aligned so that a row ends where the rollout starts.
    Each row's
    canary_share is the configured weight / 100 of the period it covers (`replay_periods`;
    time-weighted where a weight changed inside it); while routes for matched users or a
    mirror send the canary more than its weight, the canary's observed share over the period
    stands in for it, as `analyze` does. Counts come from Prometheus' increase() over each
    interval (exact on aligned scrapes, extrapolated otherwise) rounded to whole requests;
    `latency` adds stable_le_EDGE / canary_le_EDGE columns when both versions have the same
    histogram. Times are RFC 3339, so replay reports seconds after the rollout started.
    """
    from canarykit.analysis import metrics as m
    from canarykit.analysis import replay
    from canarykit.analysis.settings import AnalysisSettings

    if not isinstance(release, Release):
        release = read_release(release, need_summary=True)
    target = check_output(Path(path), "replay.csv")
    defaults = AnalysisSettings()
    interval = defaults.interval_seconds if interval_seconds is None else interval_seconds
    history = defaults.dispersion_history_seconds if history_seconds is None else history_seconds
    for name, value, zero in (("interval_seconds", interval, False),
                              ("history_seconds", history, True)):
        if (isinstance(value, bool) or not isinstance(value, int | float)
                or not math.isfinite(value) or value < 0 or (value == 0 and not zero)):
            raise BadInput(name, value, f"must be a number of seconds {'>=' if zero else '>'} 0")
    periods, source = replay_periods(release)
    routed = _routing_target(release)
    for key in ("stable", "canary"):
        _summary_field(release, key)
    versions, source_of_metrics = resolved_versions(release), plan_metrics(release)
    selector = m.MetricsSelector(
        service=_summary_field(release, "service"), namespace=_summary_field(release, "namespace"),
        stable=versions["stable"], canary=versions["canary"],
        reporter=source_of_metrics.get("reporter", "destination"),
        # behind a Gateway API route each version is a Service: its name is on the metrics
        version_label=source_of_metrics.get("version_label") or (
            "destination_service_name" if routed.startswith(("HTTPRoute ", "GRPCRoute "))
            else "destination_version"),
    ).validate()
    start, end = _rollout_span(release, periods)
    after = math.floor((end - start) / interval + 1e-9)
    if after < 1:
        raise BadInput("interval_seconds", interval,
                       f"is longer than the rollout ({end - start:.0f}s): no row to judge")
    before = math.floor(history / interval + 1e-9)
    stamps = [start + k * interval for k in range(1 - before, after + 1)]
    client = prometheus if isinstance(prometheus, m.Client) else m.connect(prometheus)
    stable, stable_edges = _interval_rows(client, selector, selector.stable, stamps, interval,
                                          latency)
    canary, canary_edges = _interval_rows(client, selector, selector.canary, stamps, interval,
                                          latency)
    notes = [f"canary_share from {source}"]
    if not any(stable.get(round(t, 3), (0.0,))[0] for t in stamps if t > start):
        raise CanaryKitError(
            f"Prometheus at {client.url} has no requests of stable {selector.stable} of "
            f"{selector.service} in {selector.namespace} between {times.timestamp(start)} and "
            f"{times.timestamp(end)}: nothing to export")
    edges = stable_edges if latency and stable_edges and stable_edges == canary_edges else []
    if latency and not edges:
        notes.append("no latency columns: the versions do not have the same latency histogram")

    empty = (0.0, 0.0, [0.0] * len(edges))
    table = [(stamp, stable.get(round(stamp, 3), empty), canary.get(round(stamp, 3), empty))
             for stamp in stamps]
    observed: dict[int, float] = {}
    for index, period in enumerate(periods):
        if period.share_known:
            continue
        until = math.inf if period.end is None else period.end
        inside = [(s[0], c[0]) for t, s, c in table if period.start <= t - interval
                  and t <= until]
        served = sum(c for _, c in inside)
        share = served / (served + sum(s for s, _ in inside)) if inside and served else 0.0
        observed[index] = share if 0 < share < 1 else 0.0
        notes.append(f"weight {period.weight} from {times.timestamp(period.start)}: routes for "
                     f"matched users or a mirror; the observed canary share {share:.4f} "
                     "stands in for it")
    shares = _shares(stamps, interval, start, periods, observed)

    def whole(value: float) -> int:
        return int(round(value))

    def cumulative(per_bucket: list[float]) -> list[int]:
        running, out = 0.0, []
        for count in per_bucket:
            running += count
            out.append(whole(running))
        return out

    columns = [replay.STREAM, replay.TIME, replay.SHARE, *replay.COUNTS]
    columns += [replay.bucket_column(version, edge) for version in ("stable", "canary")
                for edge in edges]
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(columns)
    spec = "seconds" if float(interval).is_integer() else "milliseconds"
    for (stamp, s, c), share in zip(table, shares, strict=True):
        row: list[Any] = [release.summary["release"], times.timestamp(stamp, spec),
                          f"{share:.6g}"]
        for requests, errors, _ in (s, c):
            row += [whole(requests), min(whole(errors), whole(requests))]
        if edges:
            row += cumulative(s[2] or empty[2]) + cumulative(c[2] or empty[2])
        writer.writerow(row)
    write_atomically(target, text.getvalue(), mode=0o644)
    return ReplayExport(target, len(stamps), before, float(start), float(start + after * interval),
                        bool(edges), notes)


# ---------------------------------------------------------------- the notebook


def post_rollout_analysis(result: runbook.RunbookResult, *, release_folder: str = "",
                          reports: str = "reports",
                          service: str = "reviews") -> dict[str, pd.DataFrame]:
    """Load a past release for exploration and note what it holds in the result."""
    try:
        folder = find_release(release_folder, reports=reports, service=service)
        frames = load_release(folder)
        phases_frame = frames["phases"]
        result.notes.append(f"release folder {folder}")
        result.notes.append(
            f"{len(phases_frame)} phases, {len(frames['decisions'])} judgements, "
            f"{len(frames['changes'])} changes, {len(frames['metrics'])} metric rows")
        verdicts = [v for v in phases_frame.get("decision", []) if isinstance(v, str)]
        if verdicts:
            result.notes.append("decisions: " + ", ".join(verdicts))
    except Exception as exc:
        result.outcome, result.error = runbook.Outcome.ERROR, runbook.error_text(exc)
        runbook.record(result)
        raise
    result.outcome = runbook.Outcome.OK
    return frames


def post_rollout_export(result: runbook.RunbookResult, *, release_folder: str = "",
                        reports: str = "reports", service: str = "reviews",
                        file_name: str = "replay.csv") -> ReplayExport | None:
    """Export the release's counts next to it for `canarykit replay`, from the Prometheus its
    plan names (else $CANARYKIT_PROMETHEUS_URL) at its analysis interval and history.

    The post-rollout notebook explores: when the counts cannot be exported (no Prometheus,
    no data any more, a release that never shifted traffic) it notes why in the result and
    carries on, instead of failing the notebook.
    """
    try:
        folder = find_release(release_folder, reports=reports, service=service)
        release = read_release(folder, need_summary=True)
        target = check_output(folder / _output_name(file_name), file_name)
        prometheus, config = _release_prometheus(release)
        done = export_replay_csv(release, prometheus, target,
                                 interval_seconds=config.interval_seconds,
                                 history_seconds=config.dispersion_history_seconds)
        stored = records.origin(folder)
        if stored:  # beside the release it was pulled from
            records.push(folder, stored)
    except (CanaryKitError, OSError) as exc:
        note = f"{redact.shown(file_name)} not written: {exc}"
        result.notes.append(redact.strip_userinfo(note))
        return None
    result.notes.append(f"{done.path}: {done.rows} rows of counts ({done.history_rows} of "
                        "stable's history) for canarykit replay; " + "; ".join(done.notes))
    return done


def _output_name(name: Any) -> str:
    """The export's file name: a plain .csv name inside the release folder."""
    plain_name("file_name", name)
    if not name.endswith(".csv"):
        raise BadInput("file_name", redact.shown(name), "must end in .csv")
    return name


def _release_prometheus(release: Release) -> tuple[m.PrometheusSettings, AnalysisSettings]:
    """The Prometheus and the analysis settings of the release's plan.yaml (without one:
    $CANARYKIT_PROMETHEUS_URL and the default settings). Only these two sections are read, so
    a plan written by another canarykit version still gives them."""
    from canarykit.analysis import metrics as m
    from canarykit.analysis.settings import PLAN, AnalysisSettings
    from canarykit.core import yamlsafe
    from canarykit.rollout import target

    path = release.folder / PLAN_YAML
    plan: Any = {}
    if release.plan_source is not None:
        plan = yamlsafe.load(release.plan_source, PLAN_YAML) or {}
    plan = plan if isinstance(plan, dict) else {}
    found = plan.get("prometheus") if isinstance(plan.get("prometheus"), dict) else {}
    given, token_env = found.get("url") or "", found.get("bearer_token_env") or None
    if not isinstance(given, str) or len(given) > MAX_TEXT:
        raise BadInput("plan.yaml prometheus.url", redact.shown(given), "must be a URL")
    if redact.strip_userinfo(given) != given:
        raise BadInput("plan.yaml prometheus.url", redact.shown(given),
                       "must not carry credentials; use basic_auth_user and "
                       "basic_auth_password_env")
    if token_env is not None and not isinstance(token_env, str):
        raise BadInput("plan.yaml prometheus.bearer_token_env", redact.shown(token_env),
                       "must be the NAME of an environment variable")
    url = target.resolve_prometheus_url(given)
    if not url:
        raise BadInput("prometheus_url", "", f"no Prometheus to read the counts from: {path} "
                       f"names none and ${target.PROMETHEUS_URL_ENV} is not set")
    if redact.strip_userinfo(url) != url:
        raise BadInput(f"${target.PROMETHEUS_URL_ENV}", redact.shown(url),
                       "must not carry credentials")
    settings = m.PrometheusSettings(url=url, bearer_token_env=token_env)
    analysis = AnalysisSettings.from_dict(plan.get("analysis") or {}, where=PLAN,
                                          path="plan.yaml analysis")
    return settings.validate(), analysis
