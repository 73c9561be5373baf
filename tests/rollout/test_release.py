"""canarykit.rollout.release: a past release folder read back for the report and the notebook."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest

from canarykit.core.errors import BadInput
from canarykit.rollout import release as release_folder
from canarykit.rollout import runbook
from tests import release_fixture


@pytest.fixture
def release(tmp_path) -> Path:
    return release_fixture.write_release(tmp_path / "reports" / "reviews" / "r-1")


def test_load_release_reads_phases_metrics_decisions_and_changes(release):
    frames = release_folder.load_release(release)
    listed = json.loads((release / "release.json").read_text())["phases"]
    assert list(frames["phases"]["notebook"]) == [p["notebook"] for p in listed]
    died = frames["phases"][frames["phases"]["notebook"] == "03-shift-5.ipynb"].iloc[0]
    assert not died["recorded"] and died["error"].startswith("ConcurrentChangeError")
    metrics = frames["metrics"]
    assert set(metrics["version"]) == {"v1", "v2"}
    assert str(metrics["timestamp"].dtype).startswith("datetime64")
    assert not metrics.duplicated(["timestamp", "version", "metric"]).any()
    failed = frames["decisions"].query("judge == 'error-rate-sequential' and verdict == 'FAIL'")
    assert list(failed["p_value"]) == [4.7e-05]
    assert list(failed["phase"]) == ["analyze-25"]
    assert list(frames["changes"]["operation"]) == [
        "add-header-route", "set-weights", "set-weights", "rollback"]
    quarter = frames["weights"].query("phase == 'shift-25'")
    assert dict(zip(quarter["version"], quarter["weight"], strict=True)) == {"v1": 75, "v2": 25}


def test_load_release_finds_notebooks_release_json_does_not_list(release):
    (release / "release.json").unlink()
    frames = release_folder.load_release(release)
    assert len(frames["phases"]) == len(list(release.glob("[0-9][0-9]-*.ipynb")))
    assert len(frames["decisions"]) > 0


def test_load_release_keeps_times_as_utc_datetimes(release):
    frames = release_folder.load_release(release)
    assert frames["release"].loc[0, "finished"] == pd.Timestamp("2024-05-01T12:09:00Z")
    analyzed = frames["phases"].query("name == 'analyze-25'").iloc[0]
    assert analyzed["finished"] == pd.Timestamp("2024-05-01T12:08:51Z")
    assert analyzed["decision"] == "FAIL"
    assert frames["weights"]["timestamp"].dt.tz is not None


def test_release_figures_draw_share_errors_and_latency(release):
    figures = release_folder.release_figures(release_folder.load_release(release))
    assert list(figures) == ["traffic", "errors", "latency"]
    names = {name: [trace.name for trace in figure.data] for name, figure in figures.items()}
    assert {"v1 configured weight", "v2 configured weight", "v1 observed share",
            "v2 observed share"} == set(names["traffic"])
    assert set(names["errors"]) == {"v1", "v2"}
    assert "v2 p99" in names["latency"]
    ranges = {tuple(figure.layout.xaxis.range) for figure in figures.values()}
    assert ranges == {("2024-05-01T12:00:00", "2024-05-01T12:10:00")}  # one time axis


def test_release_figures_mark_each_decision_on_the_traffic_chart(release):
    traffic = release_folder.release_figures(release_folder.load_release(release))["traffic"]
    marks = [a.text for a in traffic.layout.annotations]
    assert marks == ["analyze-5: PASS", "analyze-25: FAIL"]


def test_labels_from_the_folder_are_shown_as_text_by_plotly(release):
    figures = release_folder.release_figures(release_folder.load_release(release),
                                             evidence=True)
    hover = " ".join(figures["evidence"].data[0].hovertext)
    assert "<script>" not in hover and "&lt;script&gt;alert(1)&lt;/script&gt;" in hover


def test_release_figures_of_an_empty_release_say_no_data(tmp_path):
    (tmp_path / "release.json").write_text(json.dumps({"service": "reviews", "phases": []}))
    figures = release_folder.release_figures(release_folder.load_release(tmp_path),
                                             evidence=True)
    for name, figure in figures.items():
        assert not figure.data, name
        assert figure.layout.annotations[0].text.startswith("no data: "), name


def test_read_release_refuses_what_is_not_a_release_folder(tmp_path):
    with pytest.raises(BadInput, match="no such directory"):
        release_folder.read_release(tmp_path / "nope")
    with pytest.raises(BadInput, match="it has no release.json"):
        release_folder.read_release(tmp_path, need_summary=True)
    (tmp_path / "release.json").write_text("[1, 2]")
    with pytest.raises(BadInput, match="must be an object with a list of phases"):
        release_folder.read_release(tmp_path)


def test_find_release_takes_the_newest_folder_of_the_service(release, tmp_path):
    newer = release_fixture.write_release(tmp_path / "reports" / "reviews" / "r-2")
    os.utime(newer / "release.json", (2_000_000_000, 2_000_000_000))
    found = release_folder.find_release("", reports=str(tmp_path / "reports"), service="reviews")
    assert found == newer
    with pytest.raises(BadInput) as refused:
        release_folder.find_release("", reports=str(tmp_path / "reports"), service="ratings")
    assert refused.value.field == "release_folder"


def test_post_rollout_analysis_records_what_it_loaded(release, tmp_path):
    result = runbook.new_result("post-rollout-analysis", {"release_folder": str(release)})
    frames = release_folder.post_rollout_analysis(result, release_folder=str(release))
    assert result.outcome == runbook.Outcome.OK
    assert str(release) in result.notes[0]
    assert "decisions: PASS, FAIL" in result.notes
    assert isinstance(frames["phases"], pd.DataFrame)


