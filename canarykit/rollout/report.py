"""The release report: one self-contained HTML file per release folder.

`build_report(folder)` reads what a release left behind (release.json, the executed
notebooks' results, plan.yaml, audit.jsonl) and writes `folder/report.html`. The file opens
offline with zero network requests: plotly.js is embedded once, gzip-compressed and base64
encoded, and unpacked in the browser with `DecompressionStream`; the figures are embedded as
JSON and drawn once plotly is loaded. Every string that came from the cluster, parameters or
notebooks is HTML-escaped, and JSON inside script tags cannot close them.
"""

from __future__ import annotations

import argparse
import base64
import functools
import gzip
import html
import json
import math
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from string import Template
from typing import Any

import plotly
import plotly.graph_objects as go

from canarykit import __version__
from canarykit.cluster import audit
from canarykit.core.errors import BadInput
from canarykit.rollout import runbook

REPORT_NAME = "report.html"
PLOTLY_JS = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
SEQUENTIAL_JUDGE = "error-rate-sequential"
COLORS = ("#1f6fb2", "#e4760b", "#2e9b5b", "#8a4fbf", "#c23b3b", "#6b6b6b")
LATENCY_DASH = {"latency-p50": "dot", "latency-p90": "dash", "latency-p99": "solid"}
STATUS_CLASS = {"promoted": "good", "rolled-back": "bad", "failed": "bad", "aborted": "warn",
                "in-progress": "info"}
VERDICT_CLASS = {"PASS": "good", "FAIL": "bad", "INCONCLUSIVE": "warn"}


@dataclass
class Phase:
    """One phase as the report shows it: the driver's entry plus what its notebook recorded."""

    entry: dict[str, Any]
    result: dict[str, Any] | None
    error: str | None

    def get(self, key: str) -> Any:
        """A field from release.json's entry, else from the recorded result."""
        value = self.entry.get(key)
        return value if value is not None else (self.result or {}).get(key)

    @property
    def label(self) -> str:
        return f"{self.entry.get('index', '?')}. {self.entry.get('name', '?')}"

    @property
    def decision(self) -> dict[str, Any] | None:
        return (self.result or {}).get("decision")


# ---------------------------------------------------------------- reading the folder


def load_release(folder: Path) -> dict[str, Any]:
    """release.json, or BadInput saying why `folder` is not a release folder."""
    path = Path(folder) / "release.json"
    if not Path(folder).is_dir():
        raise BadInput("FOLDER", str(folder), "is not a release folder: no such directory")
    if not path.is_file():
        raise BadInput("FOLDER", str(folder), "is not a release folder: it has no release.json")
    try:
        release = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise BadInput("release.json", str(path), f"is not readable JSON ({exc})") from None
    if not isinstance(release, dict) or not isinstance(release.get("phases", []), list):
        raise BadInput("release.json", str(path), "must be an object with a list of phases")
    return release


def load_phases(folder: Path, release: dict[str, Any]) -> list[Phase]:
    """Each phase of release.json with its notebook's result, plus notebooks it does not list."""
    entries = [dict(e) for e in release.get("phases") or [] if isinstance(e, dict)]
    listed = {e.get("notebook") for e in entries}
    for path in sorted(Path(folder).glob("[0-9][0-9]-*.ipynb")):
        if path.name not in listed:  # the driver died before rewriting release.json
            number, _, name = path.stem.partition("-")
            entries.append({"index": int(number), "name": name, "notebook": path.name})
    entries.sort(key=lambda e: (e.get("index") is None, e.get("index") or 0))
    return [_load_phase(Path(folder), entry) for entry in entries]


def _load_phase(folder: Path, entry: dict[str, Any]) -> Phase:
    notebook = entry.get("notebook")
    if not notebook:
        return Phase(entry, None, "release.json names no notebook for this phase")
    path = folder / str(notebook)
    if not path.is_file():
        return Phase(entry, None, f"notebook {notebook} is missing")
    try:
        result, error = runbook.read_notebook(path)
    except Exception as exc:  # nbformat raises several kinds on a damaged file
        return Phase(entry, None, f"notebook {notebook} is unreadable: {exc}")
    if result is None and error is None:
        error = "the run recorded no result (it died before its last cell)"
    if result is not None and result.get("error"):
        error = str(result["error"])
    return Phase(entry, result, error)


def check_audit(folder: Path, phases: list[Phase]) -> dict[str, Any]:
    """The audit chain's verification, against the audit hashes the changes carry."""
    expected = {
        change["auditHash"]
        for phase in phases
        for change in (phase.result or {}).get("changes") or []
        if isinstance(change, dict) and change.get("auditHash") and not change.get("dryRun")
    }
    path = Path(folder) / "audit.jsonl"
    check = audit.verify_chain(path, expected_heads=expected)
    try:
        records = audit.read_records(path) if path.exists() else []
    except (OSError, ValueError):
        records = []
    return {**check.to_dict(), "expected": len(expected), "entries": records}


# ---------------------------------------------------------------- small helpers


def esc(value: Any) -> str:
    """HTML-escape anything (None shows as an empty string)."""
    return html.escape("" if value is None else str(value), quote=True)


def script_json(value: Any) -> str:
    """JSON that is safe inside a <script> element: no `<`, `>` or `&` appear literally."""
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return (text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def parse_time(value: Any) -> datetime | None:
    """Unix seconds or an ISO 8601 string as an aware datetime; None if neither."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return datetime.fromtimestamp(value, UTC) if math.isfinite(value) else None
    try:
        moment = datetime.fromisoformat(str(value).strip().replace(" ", "T"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def show_time(value: Any, day: Any = None) -> str:
    """A time in UTC; only the time of day when it falls on the same day as `day`."""
    moment, first = parse_time(value), parse_time(day)
    if not moment:
        return esc(value or "–")
    if first and first.astimezone(UTC).date() == moment.astimezone(UTC).date():
        return moment.astimezone(UTC).strftime("%H:%M:%S")
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def show_duration(start: Any, end: Any) -> str:
    first, last = parse_time(start), parse_time(end)
    if not first or not last:
        return "–"
    seconds = max(0, round((last - first).total_seconds()))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m {seconds:02d}s"
    return f"{minutes}m {seconds:02d}s" if minutes else f"{seconds}s"


def show_value(value: Any) -> str:
    """A number compactly, anything else as compact JSON; escaped."""
    if isinstance(value, float):
        return esc(f"{value:.4g}")
    if isinstance(value, (dict, list)):
        return esc(json.dumps(value, default=str, separators=(", ", ": ")))
    return esc(value)


def badge(text: Any, css: str) -> str:
    return f'<span class="badge {css}">{esc(text)}</span>'


def verdict_badge(verdict: Any) -> str:
    return badge(verdict, VERDICT_CLASS.get(str(verdict), "info")) if verdict else "–"


def mapping_list(values: Any) -> str:
    """A dict as `key: value` lines (lists of segments are summarised by their length)."""
    if not isinstance(values, dict) or not values:
        return "–"
    lines = []
    for key, value in values.items():
        long = isinstance(value, list) and (len(value) > 4 or any(
            isinstance(item, (dict, list)) for item in value))
        shown = f"{len(value)} items" if long else None
        lines.append(f"<div>{esc(key)}: {esc(shown) if shown else show_value(value)}</div>")
    return "".join(lines)


# ---------------------------------------------------------------- metrics


def metric_rows(phases: list[Phase]) -> list[dict[str, Any]]:
    """All phases' metric rows, one per (metric, version, time), finite values only."""
    rows: dict[tuple[str, str, datetime], float] = {}
    for phase in phases:
        for row in (phase.result or {}).get("metrics") or []:
            if not isinstance(row, dict):
                continue
            moment, value = parse_time(row.get("timestamp")), row.get("value")
            if moment is None or not isinstance(value, (int, float)) or not math.isfinite(value):
                continue
            rows[(str(row.get("metric")), str(row.get("version")), moment)] = float(value)
    return [
        {"metric": metric, "version": version, "time": moment, "value": value}
        for (metric, version, moment), value in sorted(rows.items(), key=lambda i: i[0][2])
    ]


def series(rows: list[dict[str, Any]], metric: str) -> dict[str, list[tuple[datetime, float]]]:
    """version -> [(time, value)] for one metric."""
    found: dict[str, list[tuple[datetime, float]]] = {}
    for row in rows:
        if row["metric"] == metric:
            found.setdefault(row["version"], []).append((row["time"], row["value"]))
    return found


def five_xx(rows: list[dict[str, Any]]) -> tuple[dict[str, list], str]:
    """5xx per version: percent of requests when success-rate or request-rate is known."""
    success = series(rows, "success-rate")
    if success:
        percent = {v: [(t, 100 * (1 - x)) for t, x in pts] for v, pts in success.items()}
        return percent, "% of requests"
    errors, requests = series(rows, "error-rate"), series(rows, "request-rate")
    if errors and requests:
        ratio: dict[str, list] = {}
        for version, points in errors.items():
            totals = dict(requests.get(version, []))
            ratio[version] = [(t, 100 * x / totals[t]) for t, x in points if totals.get(t)]
        if any(ratio.values()):
            return ratio, "% of requests"
    return errors, "5xx per second"


def version_colors(release: dict[str, Any], rows: list[dict[str, Any]],
                   phases: list[Phase]) -> dict[str, str]:
    """A fixed color per version: stable first, then canary, then any other."""
    names = [str(release[k]) for k in ("stable", "canary") if release.get(k)]
    names += [row["version"] for row in rows]
    for phase in phases:
        names += [str(v) for v in ((phase.result or {}).get("weights") or {})]
    ordered = list(dict.fromkeys(names))
    return {name: COLORS[i % len(COLORS)] for i, name in enumerate(ordered)}


# ---------------------------------------------------------------- figures


def _layout(title: str, y_title: str, **extra: Any) -> dict[str, Any]:
    return {
        "title": {"text": esc(title), "x": 0, "font": {"size": 15}},
        "template": "plotly_white", "height": 340,
        "margin": {"l": 60, "r": 20, "t": 45, "b": 40},
        "legend": {"orientation": "h", "y": -0.18},
        "xaxis": {"type": "date"}, "yaxis": {"title": {"text": esc(y_title)}},
        "hovermode": "x unified", **extra,
    }


def no_data(figure: go.Figure, message: str) -> go.Figure:
    """Say "no data" on the chart itself instead of leaving it out."""
    figure.update_layout(
        xaxis={"visible": False, "type": "linear"}, yaxis={"visible": False},
        annotations=[{"text": esc(f"no data: {message}"), "showarrow": False,
                      "xref": "paper", "yref": "paper", "x": 0.5, "y": 0.5,
                      "font": {"size": 16, "color": "#777"}}],
    )
    return figure


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S")


def weights_figure(release: dict[str, Any], phases: list[Phase], rows: list[dict[str, Any]],
                   colors: dict[str, str]) -> go.Figure:
    """Configured weight (step line at each phase's finish) vs observed traffic share."""
    figure = go.Figure(layout=_layout("Configured weight vs observed traffic share",
                                      "% of traffic", yaxis={"range": [-2, 102],
                                                             "title": {"text": "% of traffic"}}))
    configured: dict[str, list[tuple[datetime, float]]] = {}
    for phase in phases:
        moment = parse_time(phase.get("finished"))
        for version, weight in ((phase.result or {}).get("weights") or {}).items():
            if moment and isinstance(weight, (int, float)):
                configured.setdefault(str(version), []).append((moment, float(weight)))
    share = series(rows, "traffic-share")
    scale = 100.0 if max((v for p in share.values() for _, v in p), default=0) <= 1.0 else 1.0
    ends = [parse_time(release.get("finished"))] + [r["time"] for r in rows]
    end = max((t for t in ends if t), default=None)
    for version, points in configured.items():
        if end and end > points[-1][0]:
            points = points + [(end, points[-1][1])]
        figure.add_scatter(
            x=[_iso(t) for t, _ in points], y=[v for _, v in points], mode="lines+markers",
            line={"shape": "hv", "color": colors.get(version), "width": 3},
            name=esc(f"{version} configured weight"),
        )
    for version, points in share.items():
        figure.add_scatter(
            x=[_iso(t) for t, _ in points], y=[round(v * scale, 3) for _, v in points],
            mode="lines", line={"color": colors.get(version), "width": 1.5, "dash": "dot"},
            name=esc(f"{version} observed share"),
        )
    if not configured and not share:
        return no_data(figure, "no phase recorded weights or traffic-share metrics")
    mark_decisions(figure, phases)
    return figure


def mark_decisions(figure: go.Figure, phases: list[Phase]) -> None:
    """A dotted vertical line with the verdict where each analysis decided."""
    for phase in phases:
        moment, verdict = parse_time(phase.get("finished")), (phase.decision or {}).get("verdict")
        if not moment or not verdict:
            continue
        color = {"PASS": COLORS[2], "FAIL": COLORS[4]}.get(str(verdict), "#8a5a00")
        figure.add_shape(type="line", x0=_iso(moment), x1=_iso(moment), y0=0, y1=1, yref="paper",
                         line={"dash": "dot", "color": color, "width": 1})
        figure.add_annotation(x=_iso(moment), y=1.0, yref="paper", yanchor="bottom",
                              showarrow=False, font={"size": 11, "color": color},
                              text=esc(f"{phase.entry.get('name')}: {verdict}"))


def errors_figure(rows: list[dict[str, Any]], colors: dict[str, str]) -> go.Figure:
    values, unit = five_xx(rows)
    figure = go.Figure(layout=_layout("5xx rate per version", unit))
    for version, points in values.items():
        figure.add_scatter(x=[_iso(t) for t, _ in points], y=[round(v, 4) for _, v in points],
                           mode="lines", line={"color": colors.get(version)}, name=esc(version))
    if not any(values.values()):
        no_data(figure, "no error-rate or success-rate metrics were recorded")
    return figure


def latency_figure(rows: list[dict[str, Any]], colors: dict[str, str]) -> go.Figure:
    figure = go.Figure(layout=_layout("Latency p50 / p90 / p99 per version", "milliseconds"))
    for metric, dash in LATENCY_DASH.items():
        for version, points in series(rows, metric).items():
            figure.add_scatter(
                x=[_iso(t) for t, _ in points], y=[v for _, v in points], mode="lines",
                line={"color": colors.get(version), "dash": dash},
                name=esc(f"{version} {metric.removeprefix('latency-')}"),
            )
    if not figure.data:
        no_data(figure, "no latency metrics were recorded")
    return figure


def sequential_judgement(phase: Phase) -> dict[str, Any] | None:
    for judgement in (phase.decision or {}).get("judgements") or []:
        if isinstance(judgement, dict) and judgement.get("judge") == SEQUENTIAL_JUDGE:
            return judgement
    return None


def evidence_figure(phases: list[Phase]) -> go.Figure:
    """The sequential error-rate test's anytime-valid p-value at each analysis."""
    figure = go.Figure(layout=_layout(
        "Sequential error-rate evidence (anytime-valid p-value)", "p-value",
        yaxis={"type": "log", "title": {"text": "p-value (log)"}}, hovermode="closest"))
    points, alphas = [], set()
    for phase in phases:
        judgement = sequential_judgement(phase)
        p_value = ((judgement or {}).get("evidence") or {}).get("p_value")
        moment = parse_time(phase.get("finished"))
        if judgement and moment and isinstance(p_value, (int, float)) and p_value > 0:
            points.append((moment, float(p_value), phase.entry.get("name"), judgement))
            alpha = (judgement.get("thresholds") or {}).get("alpha")
            if isinstance(alpha, (int, float)) and alpha > 0:
                alphas.add(float(alpha))
    if not points:
        return no_data(figure, f"no analysis recorded a {SEQUENTIAL_JUDGE} p-value")
    figure.add_scatter(
        x=[_iso(t) for t, *_ in points], y=[p for _, p, *_ in points],
        mode="lines+markers+text", text=[esc(name) for *_, name, _ in points],
        textposition="top center", marker={"size": 10, "color": COLORS[0]}, name="p-value",
        hovertext=[esc(f"{name}: {j.get('verdict')} — {j.get('reason')}")
                   for *_, name, j in points],
        hoverinfo="text+y",
    )
    for alpha in sorted(alphas):
        figure.add_hline(y=alpha, line={"dash": "dash", "color": COLORS[4]},
                         annotation_text=f"alpha = {alpha:g}")
    return figure


def figures(release: dict[str, Any], phases: list[Phase]) -> list[tuple[str, go.Figure]]:
    """Every chart of the report, in order, each with its section id."""
    rows = metric_rows(phases)
    colors = version_colors(release, rows, phases)
    charts = [
        ("chart-weights", weights_figure(release, phases, rows, colors)),
        ("chart-errors", errors_figure(rows, colors)),
        ("chart-latency", latency_figure(rows, colors)),
        ("chart-evidence", evidence_figure(phases)),
    ]
    times = [parse_time(release.get("started")), parse_time(release.get("finished"))]
    times += [row["time"] for row in rows] + [parse_time(p.get("finished")) for p in phases]
    known = [t for t in times if t]
    for _, figure in charts:  # one time axis for all charts, so they line up
        if known and figure.layout.xaxis.visible is not False:
            figure.update_xaxes(range=[_iso(min(known)), _iso(max(known))])
    return charts


# ---------------------------------------------------------------- sections


def chart(chart_id: str, figure: go.Figure) -> str:
    """A placeholder div and the figure's JSON; the loader script draws it."""
    return (
        f'<div class="chart ck-chart" id="{chart_id}" data-figure="{chart_id}-json">'
        f'<p class="muted">drawing chart…</p></div>\n'
        f'<script type="application/json" id="{chart_id}-json">'
        f"{script_json(figure.to_json())}</script>"
    )


def summary_section(release: dict[str, Any], phases: list[Phase]) -> str:
    status = str(release.get("status") or "unknown")
    decisions = [p for p in phases if p.decision]
    last = decisions[-1].decision if decisions else None
    last_text = (f"last decision: {verdict_badge(last.get('verdict'))} "
                 f"at {esc(decisions[-1].entry.get('name'))}" if last else "no decision recorded")
    rows = [
        ("Service", f"{esc(release.get('service'))} in {esc(release.get('namespace'))}"),
        ("Release", esc(release.get("release"))),
        ("Stable → canary", f"{esc(release.get('stable'))} → {esc(release.get('canary'))}"),
        ("Status", esc(status)),
        ("Reason", esc(release.get("reason") or "–")),
        ("Started", show_time(release.get("started"))),
        ("Finished", show_time(release.get("finished")) if release.get("finished")
         else "not finished"),
        ("Duration", show_duration(release.get("started"), release.get("finished"))),
        ("Phases", f"{len(phases)} ({sum(1 for p in phases if p.error)} with an error)"),
    ]
    table = "".join(f"<tr><th>{name}</th><td>{value}</td></tr>" for name, value in rows)
    return (
        f'<section id="summary"><div id="verdict" class="verdict '
        f'{STATUS_CLASS.get(status, "info")}"><span class="verdict-status">'
        f'{esc(status.replace("-", " ").upper())}</span>'
        f'<span class="verdict-detail">{last_text}</span>'
        f'<div class="verdict-reason">{esc(release.get("reason") or "")}</div></div>'
        f'<table class="kv">{table}</table></section>'
    )


def timeline_section(release: dict[str, Any], phases: list[Phase]) -> str:
    day = release.get("started")
    head = ("<tr><th>#</th><th>Phase</th><th>Runbook</th><th>Notebook</th><th>Started (UTC)</th>"
            "<th>Finished (UTC)</th><th>Took</th><th>Outcome</th><th>Verdict</th>"
            "<th>Actor / runner</th></tr>")
    body = []
    for phase in phases:
        notebook = phase.entry.get("notebook")
        link = f'<a href="{esc(notebook)}">{esc(notebook)}</a>' if notebook else "–"
        outcome = phase.get("outcome") or ("error" if phase.error else "unknown")
        outcome_css = "good" if outcome == "ok" and not phase.error else "bad"
        verdict = phase.get("verdict") or (phase.decision or {}).get("verdict")
        body.append(
            f'<tr class="phase" id="phase-{esc(phase.entry.get("index"))}">'
            f"<td>{esc(phase.entry.get('index'))}</td><td>{esc(phase.entry.get('name'))}</td>"
            f"<td>{esc(phase.get('runbook'))}</td><td>{link}</td>"
            f"<td>{show_time(phase.get('started'), day)}</td>"
            f"<td>{show_time(phase.get('finished'), day)}</td>"
            f'<td class="nowrap">{show_duration(phase.get("started"), phase.get("finished"))}'
            "</td>"
            f"<td>{badge(outcome, outcome_css)}</td><td>{verdict_badge(verdict)}</td>"
            f'<td class="nowrap">{esc(phase.entry.get("actor") or "–")}<br>'
            f'<span class="muted">{esc(phase.entry.get("runner") or "")}</span></td></tr>'
        )
        if phase.error:
            body.append(f'<tr class="phase-error"><td></td><td colspan="9">'
                        f"<strong>error:</strong> <code>{esc(phase.error)}</code></td></tr>")
    return (f'<section id="timeline"><h2>Timeline</h2><table class="grid">{head}'
            f'{"".join(body)}</table></section>')


def judges_section(phases: list[Phase]) -> str:
    analyses = [p for p in phases if p.decision]
    if not analyses:
        return ('<section id="judges"><h2>Judges</h2>'
                '<p class="muted">No phase recorded a decision.</p></section>')
    parts = ['<section id="judges"><h2>Judges</h2>']
    for phase in analyses:
        decision = phase.decision or {}
        parts.append(
            f"<h3>{esc(phase.label)}: {verdict_badge(decision.get('verdict'))}</h3>"
            f'<p class="reason">{esc(decision.get("reason"))}</p>'
            '<table class="grid judges"><tr><th>Judge</th><th>Verdict</th><th>Reason</th>'
            "<th>Values</th><th>Thresholds</th><th>Evidence</th></tr>"
        )
        for judgement in decision.get("judgements") or []:
            if not isinstance(judgement, dict):
                continue
            queries = "".join(f"<div><code>{esc(q)}</code></div>"
                              for q in judgement.get("queries") or []) or "–"
            flags = " ".join(flag for flag in ("critical", "required") if judgement.get(flag))
            parts.append(
                f"<tr><td>{esc(judgement.get('judge'))}"
                f'{f"<br><span class=muted>{esc(flags)}</span>" if flags else ""}</td>'
                f"<td>{verdict_badge(judgement.get('verdict'))}</td>"
                f"<td>{esc(judgement.get('reason'))}</td>"
                f"<td>{mapping_list(judgement.get('values'))}</td>"
                f"<td>{mapping_list(judgement.get('thresholds'))}</td>"
                f"<td>{mapping_list(judgement.get('evidence'))}</td></tr>"
                f'<tr class="queries"><td></td><td colspan="5"><span class="muted">resolved '
                f"queries</span>{queries}</td></tr>"
            )
        parts.append("</table>")
    parts.append("</section>")
    return "".join(parts)


def diff_block(diff: str) -> str:
    lines = []
    for line in diff.splitlines():
        css = ("hunk" if line.startswith("@@") else "file" if line.startswith(("---", "+++"))
               else "add" if line.startswith("+") else "del" if line.startswith("-") else "")
        lines.append(f'<span class="{css}">{esc(line)}</span>' if css else esc(line))
    return '<pre class="diff">' + "\n".join(lines) + "</pre>"


def changes_section(phases: list[Phase]) -> str:
    parts = ['<section id="changes"><h2>Changes to the Istio objects</h2>']
    count = 0
    for phase in phases:
        for change in (phase.result or {}).get("changes") or []:
            if not isinstance(change, dict):
                continue
            count += 1
            state = ("dry run" if change.get("dryRun") else
                     "changed" if change.get("changed") else "no change needed")
            facts = [f"attempts {esc(change.get('attempts'))}",
                     f"resourceVersion {esc(change.get('resourceVersion'))}"]
            if change.get("auditHash"):
                facts.append(f"audit <code>{esc(str(change['auditHash'])[:16])}</code>")
            diff = change.get("diff") or ""
            parts.append(
                f'<div class="change"><h3>{esc(phase.label)}: {esc(change.get("operation"))} '
                f"on {esc(change.get('target'))} {badge(state, 'info')}</h3>"
                f'<p class="muted">params <code>{show_value(change.get("params") or {})}</code>'
                f" · {' · '.join(facts)}</p>"
                f"{diff_block(diff) if diff else '<p class=muted>empty diff</p>'}</div>"
            )
    if not count:
        parts.append('<p class="muted">No phase changed an Istio object.</p>')
    parts.append("</section>")
    return "".join(parts)


def audit_section(check: dict[str, Any]) -> str:
    if check["ok"]:
        status = (f'{badge("INTACT", "good")} {check["records"]} records, head '
                  f'<code>{esc(check["head"][:16])}</code>; the {check["expected"]} audit '
                  "hashes named by the changes are all in the chain")
    else:
        status = (f'{badge("BROKEN", "bad")} {esc(check["problem"])} '
                  f'({check["records"]} records verified before the problem)')
    rows = "".join(
        f"<tr><td>{esc(r.get('seq'))}</td><td>{esc(r.get('time'))}</td>"
        f"<td>{esc(r.get('actor'))}</td><td>{esc(r.get('operation'))}</td>"
        f"<td>{esc(r.get('target'))}</td><td><code>{esc(str(r.get('hash'))[:16])}</code></td></tr>"
        for r in check["entries"] if isinstance(r, dict)
    )
    table = ('<table class="grid"><tr><th>Seq</th><th>Time</th><th>Actor</th><th>Operation</th>'
             f"<th>Target</th><th>Hash</th></tr>{rows}</table>") if rows else ""
    return (f'<section id="audit"><h2>Audit chain</h2><p id="audit-status">{status}</p>'
            f"{table}</section>")


def details_section(folder: Path, phases: list[Phase]) -> str:
    """Each phase's parameters and notes, and the plan as run."""
    parts = ['<section id="details"><h2>Phase parameters and notes</h2>']
    for phase in phases:
        result = phase.result or {}
        params = "".join(f"<tr><th>{esc(k)}</th><td><code>{show_value(v)}</code></td></tr>"
                         for k, v in (result.get("parameters") or {}).items())
        notes = "".join(f"<li>{esc(n)}</li>" for n in result.get("notes") or [])
        parts.append(
            f"<details><summary>{esc(phase.label)}</summary>"
            f'{f"<table class=kv>{params}</table>" if params else "<p class=muted>no result</p>"}'
            f'{f"<ul>{notes}</ul>" if notes else ""}</details>'
        )
    plan = Path(folder) / "plan.yaml"
    plan_text = plan.read_text(encoding="utf-8", errors="replace") if plan.is_file() else None
    parts.append("<h2>Plan</h2>" + (f"<details><summary>plan.yaml</summary><pre>{esc(plan_text)}"
                                    "</pre></details>" if plan_text is not None
                                    else '<p class="muted">plan.yaml is missing</p>'))
    parts.append("</section>")
    return "".join(parts)


# ---------------------------------------------------------------- page


@functools.lru_cache(maxsize=1)
def packed_plotly() -> str:
    """plotly.min.js as base64 of its gzip (about 1.9 MB instead of 4.8 MB)."""
    return base64.b64encode(gzip.compress(PLOTLY_JS.read_bytes(), 9, mtime=0)).decode("ascii")


CSS = """
:root { color-scheme: light; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #222;
       margin: 0 auto; max-width: 1200px; padding: 16px 24px; background: #fff; }
h1 { font-size: 22px; margin: 4px 0 12px; }
h2 { font-size: 18px; margin: 28px 0 8px; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
h3 { font-size: 15px; margin: 16px 0 6px; }
table { border-collapse: collapse; margin: 6px 0; }
th, td { text-align: left; vertical-align: top; padding: 4px 8px; }
table.grid { width: 100%; } table.grid th { background: #f3f4f6; }
table.grid td, table.grid th { border: 1px solid #e2e4e8; }
table.kv th { color: #555; font-weight: 600; padding-right: 16px; }
code, pre { font: 12px/1.4 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
tr.queries td { border-top: none; padding-top: 0; font-size: 12px; }
tr.queries code { word-break: break-all; color: #444; }
pre { background: #f7f7f9; border: 1px solid #e2e4e8; padding: 8px; overflow-x: auto; }
pre.diff .add { color: #146c2e; background: #e6f6ea; }
pre.diff .del { color: #a11; background: #fdecec; }
pre.diff .hunk { color: #6a3fb5; } pre.diff .file { color: #555; font-weight: 600; }
.badge { display: inline-block; padding: 0 7px; border-radius: 9px; font-size: 12px;
         font-weight: 600; border: 1px solid transparent; }
.good { background: #e6f6ea; color: #146c2e; border-color: #a7dcb5; }
.bad { background: #fdecec; color: #a11; border-color: #f0b4b4; }
.warn { background: #fff4db; color: #8a5a00; border-color: #f0d48a; }
.info { background: #e8f0fb; color: #1f4f8f; border-color: #b5cbe9; }
.verdict { padding: 12px 16px; border-radius: 8px; border: 1px solid; margin-bottom: 10px; }
.verdict-status { font-size: 24px; font-weight: 700; margin-right: 16px; }
.verdict-reason { margin-top: 4px; color: #333; }
td.nowrap { white-space: nowrap; }
.muted { color: #777; } .reason { margin: 2px 0 6px; }
tr.phase-error td { background: #fdf3f3; }
.chart { min-height: 340px; border: 1px solid #eee; margin: 10px 0; }
details { margin: 4px 0; } summary { cursor: pointer; }
footer { margin-top: 32px; color: #777; font-size: 12px; border-top: 1px solid #ddd;
         padding-top: 6px; }
@media print { body { max-width: none; padding: 0; } .chart { break-inside: avoid; }
               details > *:not(summary) { display: block; } }
"""

# Unpack plotly.js (gzip + base64) without any request, then draw every chart once.
LOADER = """
(async () => {
  window.canarykitChartsDrawn = 0;
  window.addEventListener('beforeprint', () => {
    document.querySelectorAll('details').forEach((d) => { d.open = true; });
  });
  const charts = Array.from(document.querySelectorAll('.ck-chart'));
  const fail = (message) => charts.forEach((div) => {
    div.textContent = 'chart not drawn: ' + message;
  });
  try {
    if (typeof DecompressionStream === 'undefined') {
      fail('this browser has no DecompressionStream');
      return;
    }
    const packed = document.getElementById('ck-plotly').textContent.trim();
    const raw = atob(packed);
    const bytes = new Uint8Array(raw.length);
    for (let i = 0; i < raw.length; i += 1) bytes[i] = raw.charCodeAt(i);
    const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream('gzip'));
    const code = await new Response(stream).text();
    new Function(code)();
    for (const div of charts) {
      const figure = JSON.parse(document.getElementById(div.dataset.figure).textContent);
      div.textContent = '';
      await Plotly.newPlot(div, figure.data, figure.layout,
                           {displaylogo: false, responsive: true});
      window.canarykitChartsDrawn += 1;
    }
  } catch (error) {
    fail(String(error));
    console.error('canarykit report: ' + error);
  }
})();
"""

PAGE = Template("""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="canarykit $version">
<title>$title</title>
<style>$css</style>
</head>
<body data-charts-expected="$charts_expected">
<h1>$title</h1>
$summary
$timeline
<section id="charts"><h2>Traffic, errors and latency</h2>
$charts
</section>
$judges
$changes
$audit
$details
<footer>Built by canarykit $version on $built from $folder.
Self-contained: opens offline, makes no network requests.</footer>
<script type="application/octet-stream" id="ck-plotly">$plotly</script>
<script>$loader</script>
</body>
</html>
""")


def render(folder: Path, release: dict[str, Any], phases: list[Phase],
           check: dict[str, Any]) -> str:
    """The whole page as a string."""
    charts = figures(release, phases)
    title = f"Release {release.get('release') or Path(folder).name} of {release.get('service')}"
    return PAGE.substitute(
        version=esc(__version__), title=esc(title), css=CSS, charts_expected=len(charts),
        summary=summary_section(release, phases), timeline=timeline_section(release, phases),
        charts="\n".join(chart(chart_id, figure) for chart_id, figure in charts),
        judges=judges_section(phases), changes=changes_section(phases),
        audit=audit_section(check), details=details_section(folder, phases),
        built=esc(datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")),
        folder=esc(Path(folder).name), plotly=packed_plotly(), loader=LOADER,
    )


def build_report(folder: Path) -> Path:
    """Write `folder/report.html` from what the release left in `folder`; return its path."""
    folder = Path(folder)
    release = load_release(folder)
    phases = load_phases(folder, release)
    page = render(folder, release, phases, check_audit(folder, phases))
    target = folder / REPORT_NAME
    target.write_text(page, encoding="utf-8")
    return target


# ---------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`canarykit report build FOLDER`."""
    commands = parser.add_subparsers(dest="report_command", required=True, metavar="COMMAND")
    build = commands.add_parser("build", help="build the HTML report of a release folder")
    build.add_argument("folder", type=Path, metavar="FOLDER",
                       help="release folder (reports/SERVICE/RELEASE) holding release.json")


def run(args: argparse.Namespace) -> int:
    """`canarykit report build FOLDER`: 0 when written, 2 when FOLDER is not a release folder."""
    try:
        path = build_report(args.folder)
    except BadInput as exc:
        print(f"canarykit: error: {exc}", file=sys.stderr)
        return 2
    print(f"report: {path}")
    return 0

