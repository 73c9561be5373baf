"""A past release folder read back: one reader for the report and the post-rollout notebook."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from canarykit.analysis import metrics as m
from canarykit.core.errors import BadInput
from canarykit.mesh import istio
from canarykit.rollout import runbook
from canarykit.rollout.phases import _error_text


def find_release(release_folder: str = "", *, reports: str = "reports",
                 service: str = "reviews") -> Path:
    """`release_folder`, or the newest release folder under reports/SERVICE/."""
    if release_folder:
        folder = Path(release_folder)
        if not folder.is_dir():
            raise BadInput("release_folder", release_folder, "is not a folder")
        return folder
    istio.check_dns_label("service", service)
    root = Path(reports) / service
    found = [p for p in root.iterdir() if p.is_dir()] if root.is_dir() else []
    if not found:
        raise BadInput("release_folder", release_folder,
                       f"no release folder under {root}; give one")
    return max(found, key=lambda p: (p / "release.json").stat().st_mtime
               if (p / "release.json").exists() else p.stat().st_mtime)


def load_release(folder: str | Path) -> dict[str, pd.DataFrame]:
    """A past release as pandas frames: phases, metrics, decisions (one row per judgement),
    changes and weights (the configured split after each phase)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise BadInput("release_folder", str(folder), "is not a folder")
    release_file = folder / "release.json"
    release = json.loads(release_file.read_text(encoding="utf-8")) if release_file.is_file() \
        else {}
    entries = [dict(e) for e in release.get("phases") or [] if isinstance(e, dict)]
    listed = {e.get("notebook") for e in entries}
    for path in sorted(folder.glob("[0-9][0-9]-*.ipynb")):
        if path.name not in listed:
            number, _, name = path.stem.partition("-")
            entries.append({"index": int(number), "name": name, "notebook": path.name})
    entries.sort(key=lambda e: e.get("index") or 0)
    phases, metric_rows, decisions, changes, weights = [], [], [], [], []
    for entry in entries:
        path = folder / str(entry.get("notebook"))
        result, error = (runbook.read_notebook(path) if path.is_file()
                         else (None, "notebook missing"))
        result = result or {}
        tag = {"phase": entry.get("name"), "notebook": entry.get("notebook")}
        finished = result.get("finished") or entry.get("finished")
        decision = result.get("decision") or {}
        phases.append({**entry, "recorded": bool(result),
                       "error": result.get("error") or error,
                       "decision": decision.get("verdict"),
                       "decision_reason": decision.get("reason"),
                       "weights": result.get("weights"), "notes": result.get("notes") or []})
        for row in result.get("metrics") or []:
            metric_rows.append({**row, **tag})
        for judgement in decision.get("judgements") or []:
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
                              "thresholds": judgement.get("thresholds")})
        for change in result.get("changes") or []:
            changes.append({**tag, "finished": finished,
                            **{k: change.get(k) for k in ("operation", "target", "changed",
                                                          "params", "resourceVersion",
                                                          "auditHash", "diff")}})
        for version, weight in (result.get("weights") or {}).items():
            weights.append({**tag, "timestamp": finished, "version": version, "weight": weight})
    metrics_frame = pd.DataFrame(metric_rows, columns=[*m.FRAME_COLUMNS, "phase", "notebook"])
    metrics_frame["timestamp"] = pd.to_datetime(metrics_frame["timestamp"], unit="s", utc=True)
    metrics_frame = metrics_frame.drop_duplicates(["timestamp", "version", "metric"], keep="last")
    weights_frame = pd.DataFrame(
        weights, columns=["phase", "notebook", "timestamp", "version", "weight"])
    weights_frame["timestamp"] = pd.to_datetime(weights_frame["timestamp"], utc=True)
    return {
        "phases": pd.DataFrame(phases),
        "metrics": metrics_frame.sort_values(["metric", "version", "timestamp"],
                                             ignore_index=True),
        "decisions": pd.DataFrame(decisions, columns=[
            "phase", "notebook", "finished", "decision", "decision_reason", "judge", "verdict",
            "reason", "critical", "required", "p_value", "bayes_factor", "values",
            "thresholds"]),
        "changes": pd.DataFrame(changes, columns=[
            "phase", "notebook", "finished", "operation", "target", "changed", "params",
            "resourceVersion", "auditHash", "diff"]),
        "weights": weights_frame,
    }


def release_figures(frames: dict[str, pd.DataFrame]) -> dict[str, Any]:
    """Plotly figures of a loaded release: configured weight vs observed share, 5xx rate and
    latency quantiles per version over time."""
    import plotly.graph_objects as go

    metrics_frame, weights = frames["metrics"], frames["weights"]
    figures = {}
    share = go.Figure()
    for version, rows in weights.groupby("version"):
        share.add_trace(go.Scatter(x=rows["timestamp"], y=rows["weight"] / 100, mode="lines",
                                   line_shape="hv", name=f"{version} configured"))
    for version, rows in metrics_frame[metrics_frame["metric"] == "traffic-share"].groupby(
            "version"):
        share.add_trace(go.Scatter(x=rows["timestamp"], y=rows["value"], mode="markers",
                                   name=f"{version} observed"))
    share.update_layout(title="Configured weight vs observed traffic share",
                        yaxis_tickformat=".0%")
    figures["traffic"] = share
    errors = go.Figure()
    for version, rows in metrics_frame[metrics_frame["metric"] == "error-rate"].groupby("version"):
        errors.add_trace(go.Scatter(x=rows["timestamp"], y=rows["value"], name=version))
    errors.update_layout(title="5xx responses per second", yaxis_title="5xx/s")
    figures["errors"] = errors
    latency = go.Figure()
    for (metric, version), rows in metrics_frame[
            metrics_frame["metric"].str.startswith("latency-")].groupby(["metric", "version"]):
        latency.add_trace(go.Scatter(x=rows["timestamp"], y=rows["value"],
                                     name=f"{version} {metric.removeprefix('latency-')}"))
    latency.update_layout(title="Latency per version", yaxis_title="ms")
    figures["latency"] = latency
    return figures


def post_rollout_analysis(result: dict[str, Any], *, release_folder: str = "",
                          reports: str = "reports",
                          service: str = "reviews") -> dict[str, pd.DataFrame]:
    """Load a past release for exploration and note what it holds in the result."""
    try:
        folder = find_release(release_folder, reports=reports, service=service)
        frames = load_release(folder)
        phases_frame = frames["phases"]
        result["notes"].append(f"release folder {folder}")
        result["notes"].append(
            f"{len(phases_frame)} phases, {len(frames['decisions'])} judgements, "
            f"{len(frames['changes'])} changes, {len(frames['metrics'])} metric rows")
        verdicts = [v for v in phases_frame.get("decision", []) if isinstance(v, str)]
        if verdicts:
            result["notes"].append("decisions: " + ", ".join(verdicts))
    except Exception as exc:
        result["outcome"], result["error"] = "error", _error_text(exc)
        runbook.record(result)
        raise
    result["outcome"] = "ok"
    return frames
