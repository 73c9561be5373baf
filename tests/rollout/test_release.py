"""canarykit.rollout.release: a past release folder read back for the report and the notebook."""

from __future__ import annotations

import csv
import json
import os
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest

from canarykit.analysis import metrics as m
from canarykit.analysis import replay, step
from canarykit.analysis.settings import AnalysisSettings
from canarykit.core.errors import BadInput
from canarykit.rollout import release as release_folder
from canarykit.rollout import runbook
from tests import release_fixture
from tests.prometheus_fixture import END


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




# ---------------------------------------------------------------- the replay export


def _http(service: str, weight: int, header_route: bool = False) -> dict:
    """The managed fields of the service's VirtualService at this canary weight."""
    http = [{"name": "canary-internal-header", "match": [{"headers": {"x-canary": {
        "exact": "true"}}}], "route": [{"destination": {"host": service, "subset": "v2"}}]}
        ] if header_route else []
    http.append({"name": "primary", "route": [
        {"destination": {"host": service, "subset": "v1"}, "weight": 100 - weight},
        {"destination": {"host": service, "subset": "v2"}, "weight": weight}]})
    return {"http": http}


def prometheus_release(folder: Path, service: str, changes: list[tuple[int, int, bool]], *,
                       prometheus_url: str = "") -> Path:
    """A release of SERVICE in the Prometheus fixture (data up to END): begin_rollout 10 s
    before the first change, each (seconds before END, weight, header route) change recorded
    in the audit log as canarykit records it, then a rollback at END."""
    log = folder / "audit.jsonl"
    target, name = f"VirtualService shop/{service}", f"{service}-replay"
    entries = [(changes[0][0] + 10, "begin_rollout", {"release": name}, _http(service, 0))]
    entries += [(ago, "set-weights", {"weights": {"v2": weight}}, _http(service, weight, header))
                for ago, weight, header in changes]
    entries.append((0, "rollback", {}, _http(service, 0)))
    for ago, operation, params, after in entries:
        release_fixture.append_record(log, {"time": rfc3339_ms(END - ago),
                                            "target": target, "operation": operation,
                                            "params": params, "after": after})
    (folder / "release.json").write_text(json.dumps({
        "service": service, "namespace": "shop", "release": name, "stable": "v1",
        "canary": "v2", "started": rfc3339_ms(END - changes[0][0] - 10),
        "finished": rfc3339_ms(END), "status": "rolled-back", "phases": []}))
    if prometheus_url:
        (folder / "plan.yaml").write_text(
            f"service: {service}\nnamespace: shop\nprometheus: {{url: '{prometheus_url}'}}\n"
            "analysis: {interval: 10s, dispersion_history: 15m}\nsteps:\n  - weight: 25\n")
    return folder


def rfc3339_ms(unix: float) -> str:
    return datetime.fromtimestamp(unix, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_exported_counts_round_trip_and_replay_agrees_with_the_analysis(prometheus_url,
                                                                         tmp_path):
    """The `clustered` scenario (identical versions, 5xx in clusters of 20) at 25% for the
    last 5 minutes; its 15 minutes before are stable's history."""
    folder = prometheus_release(tmp_path, "clustered", [(300, 25, False)])
    settings = m.PrometheusSettings(prometheus_url)
    path = tmp_path / "replay.csv"
    done = release_folder.export_replay_csv(folder, settings, path, interval_seconds=10,
                                            history_seconds=900)
    assert (done.rows, done.history_rows, done.start, done.latency) == (120, 90, END - 300,
                                                                        True)
    assert "audit log's records of release clustered-replay" in done.notes[0]
    rows = read_csv(path)
    assert len(rows) == 120 and rows[0]["time"] == "2023-11-14T21:53:30Z"
    assert {r["canary_share"] for r in rows[:90]} == {"0"}
    assert {r["canary_share"] for r in rows[90:]} == {"0.25"}
    assert {r["stream"] for r in rows} == {"clustered-replay"}

    selector = m.MetricsSelector("clustered", "shop")
    window = m.raw_counts(m.connect(settings), selector, END - 300, END).versions
    for version, role in (("v1", "stable"), ("v2", "canary")):
        for count in ("requests", "errors"):
            exported = sum(int(r[f"{role}_{count}"]) for r in rows[90:])
            assert exported == round(window[version][count]), (role, count)
        exported_total = sum(int(r[f"{role}_le_inf"]) for r in rows[90:])
        assert exported_total == round(window[version]["buckets"][-1][1])

    for config in ({}, {"error_dispersion": 1}):
        analysis = AnalysisSettings(canary_weight=25, window="5m", interval="10s", **config)
        recorded = step.run_analysis(settings, selector, analysis, end=END)
        errors = next(j for j in recorded.judgements if j.judge == "error-rate-sequential")
        [replayed] = replay.replay(path, AnalysisSettings(**config))
        assert replayed.dispersion["error"]["value"] == pytest.approx(
            errors.evidence["dispersion"]["value"], rel=1e-9)
        expected = "FAIL" if config else "PASS"
        assert (errors.verdict.value, replayed.verdict) == (expected, expected), config


def test_exported_canary_share_follows_the_weights_over_each_interval(prometheus_url,
                                                                     tmp_path):
    folder = prometheus_release(tmp_path, "healthy", [(300, 25, False), (155, 50, False),
                                                      (100, 5, True)])
    path = tmp_path / "replay.csv"
    done = release_folder.export_replay_csv(folder, m.PrometheusSettings(prometheus_url), path,
                                            interval_seconds=10, history_seconds=60,
                                            latency=False)
    rows = {r["time"][11:19]: r for r in read_csv(path)}
    assert "stable_le_inf" not in next(iter(rows.values()))
    assert rows["22:08:20"]["canary_share"] == "0"  # END - 300: the history's last row
    assert rows["22:08:30"]["canary_share"] == "0.25"
    assert rows["22:10:50"]["canary_share"] == "0.375"  # half at 25%, half at 50%
    assert rows["22:11:00"]["canary_share"] == "0.5"
    # With a route for internal users the canary's observed share stands in for its weight:
    # the `healthy` canary serves 10 of 40 requests/s.
    observed = {float(r["canary_share"]) for t, r in rows.items() if t >= "22:11:50"}
    assert len(observed) == 1 and 0.23 < observed.pop() < 0.27
    assert any("observed canary share" in note for note in done.notes)
    assert replay.replay(path)[0].segments == 4


def test_the_post_rollout_export_writes_replay_csv_next_to_the_release(prometheus_url,
                                                                      tmp_path):
    folder = prometheus_release(tmp_path / "reports" / "clustered" / "r-1", "clustered",
                                [(300, 25, False)], prometheus_url=prometheus_url)
    result = runbook.new_result("post-rollout-analysis", {})
    done = release_folder.post_rollout_export(result, reports=str(tmp_path / "reports"),
                                              service="clustered")
    assert done is not None and done.path == folder / "replay.csv"
    assert (done.rows, done.history_rows) == (120, 90)  # the plan's 10s interval, 15m history
    assert result.notes[-1].startswith(f"{folder / 'replay.csv'}: 120 rows of counts")
    assert replay.replay(done.path)[0].verdict == "PASS"


def test_the_post_rollout_export_notes_why_it_wrote_nothing(release, monkeypatch):
    monkeypatch.delenv("PROM_TOKEN", raising=False)  # the plan's bearer_token_env
    result = runbook.new_result("post-rollout-analysis", {})
    assert release_folder.post_rollout_export(result, release_folder=str(release)) is None
    assert result.notes == ["replay.csv not written: prometheus.bearer_token_env: names an "
                            "environment variable that is not set or empty (got 'PROM_TOKEN')"]
    assert not (release / "replay.csv").exists()


def test_replay_periods_fall_back_to_the_weights_the_phases_recorded(release):
    periods, source = release_folder.replay_periods(release_folder.read_release(release))
    assert "phases recorded" in source and "no begin_rollout record" in source
    start = release_fixture.T0
    assert [(p.start - start, p.weight) for p in periods] == [(15, 0), (44, 5), (294, 25),
                                                               (540, 0)]


def test_a_release_that_never_shifted_traffic_is_refused_before_any_query(tmp_path):
    (tmp_path / "release.json").write_text(json.dumps({
        "service": "reviews", "namespace": "shop", "release": "r-0", "stable": "v1",
        "canary": "v2", "phases": []}))
    nobody = m.PrometheusSettings("http://127.0.0.1:9")  # never asked
    with pytest.raises(BadInput, match="never sent the canary a share of traffic"):
        release_folder.export_replay_csv(tmp_path, nobody, tmp_path / "replay.csv")
    assert not (tmp_path / "replay.csv").exists()


@pytest.mark.parametrize(("argument", "value"), [
    ("interval_seconds", 0), ("interval_seconds", True), ("history_seconds", -60),
])
def test_a_bad_interval_or_history_is_refused_naming_it(release, argument, value):
    nobody = m.PrometheusSettings("http://127.0.0.1:9")  # never asked
    with pytest.raises(BadInput) as refused:
        release_folder.export_replay_csv(release, nobody, release / "replay.csv",
                                         **{argument: value})
    assert refused.value.field == argument


# ---------------------------------------------------------------- hostile folders


def test_a_symlinked_replay_csv_is_refused_and_its_target_untouched(release, tmp_path):
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    (release / "replay.csv").symlink_to(target)
    result = runbook.new_result("post-rollout-analysis", {})
    assert release_folder.post_rollout_export(result, release_folder=str(release)) is None
    assert result.notes == ["replay.csv not written: replay.csv: is a symbolic link: refusing "
                            f"to write there (got '{release / 'replay.csv'}')"]
    assert target.read_text() == "keep me" and (release / "replay.csv").is_symlink()
    nobody = m.PrometheusSettings("http://127.0.0.1:9")  # never asked
    with pytest.raises(BadInput, match="is a symbolic link"):
        release_folder.export_replay_csv(release, nobody, release / "replay.csv")


@pytest.mark.parametrize("name", ["../replay.csv", "/tmp/replay.csv", "replay.txt"])
def test_the_post_rollout_export_writes_only_a_csv_inside_the_folder(release, name):
    result = runbook.new_result("post-rollout-analysis", {})
    assert release_folder.post_rollout_export(result, release_folder=str(release),
                                              file_name=name) is None
    assert result.notes[0].startswith(f"{name} not written: file_name: must ")


def test_the_post_rollout_export_never_repeats_a_password_from_the_plan(release):
    plan = (release / "plan.yaml").read_text().replace(
        "http://127.0.0.1:9090", "http://reader:hunter2-XYZ@127.0.0.1:9090")
    (release / "plan.yaml").write_text(plan)
    result = runbook.new_result("post-rollout-analysis", {})
    assert release_folder.post_rollout_export(result, release_folder=str(release)) is None
    assert "must not carry credentials" in result.notes[0]
    assert "hunter2" not in result.notes[0] and "http://127.0.0.1:9090" in result.notes[0]


def test_what_is_read_back_from_a_release_folder_has_no_url_userinfo(release):
    summary = json.loads((release / "release.json").read_text())
    summary["reason"] = "see http://admin:hunter2@grafana/d/1"
    summary["notifications"] = "notifications.jsonl"
    (release / "release.json").write_text(json.dumps(summary))
    (release / "notifications.jsonl").write_text(
        json.dumps({"channel": "ops", "error": "http://x:hunter2@hooks"}) + "\n{torn")
    (release / "plan.yaml").write_text("prometheus: {url: 'http://r:hunter2@prom:9090'}\n")
    read = release_folder.read_release(release)
    assert read.summary["reason"] == "see http://grafana/d/1"
    assert read.notifications == [{"channel": "ops", "error": "http://hooks"}]
    assert read.plan == "prometheus: {url: 'http://prom:9090'}\n"
    frames = release_folder.release_frames(read)
    assert "hunter2" not in frames["release"].to_json(date_format="iso")


@pytest.mark.parametrize(("change", "named"), [
    ({"phases": [{"index": "2"}]}, "release.json phases[0].index: must be a whole number"),
    ({"phases": {"1": {}}}, "release.json phases: must be a list of objects"),
    ({"started": "noon"}, "release.json started: must be a time"),
    ({"reason": "x" * 10_000_001}, "release.json reason: is longer than 10,000 (got "
                                   "'10,000,001 characters')"),
    ({"phases": [{"notebook": "/etc/passwd"}]}, "phases[0].notebook: must name a file inside"),
])
def test_the_post_rollout_notebook_refuses_a_hostile_release_json_in_one_line(
        release, change, named):
    summary = json.loads((release / "release.json").read_text())
    (release / "release.json").write_text(json.dumps({**summary, **change}))
    result = runbook.new_result("post-rollout-analysis", {})
    with pytest.raises(BadInput) as refused:
        release_folder.post_rollout_analysis(result, release_folder=str(release))
    assert named in str(refused.value) and len(str(refused.value)) < 300
    assert result.outcome == runbook.Outcome.ERROR and named in result.error


def test_a_symlinked_release_folder_is_not_taken_for_the_newest(release, tmp_path):
    elsewhere = release_fixture.write_release(tmp_path / "elsewhere" / "r-9")
    os.utime(elsewhere / "release.json", (2_000_000_000, 2_000_000_000))
    (release.parent / "r-9").symlink_to(elsewhere, target_is_directory=True)
    assert release_folder.find_release("", reports=str(tmp_path / "reports"),
                                       service="reviews") == release


@pytest.mark.parametrize("value", [1e300, -1, float("nan"), "2024-13-01", "x" * 100, True,
                                   "0001-01-01T00:00:00+01:00", [2024]])
def test_a_time_that_is_not_a_time_is_none(value):
    assert release_folder.moment(value) is None


def test_an_audit_log_of_non_records_is_reported_broken_not_a_crash(release):
    (release / "audit.jsonl").write_text("[1, 2]\n\"text\"\n")
    check = release_folder.audit_check(release_folder.read_release(release))
    assert not check["ok"] and check["entries"] == []
