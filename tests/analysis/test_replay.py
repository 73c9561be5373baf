"""`canarykit replay`: the sequential judges over recorded per-interval counts, offline.

The streams are simulated here, seeded: Poisson arrivals split by the configured share,
binomial (or clustered) 5xx, log-normal latency binned into Prometheus-like buckets, 10 s rows.
"""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from canarykit.analysis import replay
from canarykit.analysis import sequential as seq
from canarykit.analysis.settings import AnalysisSettings
from canarykit.cli import main as cli
from canarykit.core import times
from canarykit.core.errors import BadInput, ExitCode

JUDGES = ["error-rate-sequential", "traffic-split"]
EDGES_MS = (25, 50, 100, 250, 500, 1000, math.inf)
HEADER = "time,canary_share,stable_requests,stable_errors,canary_requests,canary_errors"


def simulate(seed: int, *, rows: int, history: int = 0, rps: float = 200, share: float = 0.25,
             stable_p: float = 0.01, canary_p: float | None = None, cluster: int = 1,
             latency_ms: tuple[float, float] | None = None, start: float = 10,
             interval: float = 10, stream: str | None = None) -> list[dict]:
    """`history` rows at share 0 ending at start - interval, then `rows` at `share` from
    `start` on. Errors come in clusters of `cluster` (a pod restarting), each on one version."""
    rng = np.random.default_rng(seed)
    canary_p = stable_p if canary_p is None else canary_p
    out = []
    for i in range(-history, rows):
        at_share = 0.0 if i < 0 else share
        total = int(rng.poisson(rps * interval))
        canary = int(rng.binomial(total, at_share))
        row = {"time": start + i * interval, "canary_share": at_share}
        if stream is not None:
            row = {"stream": stream, **row}
        for version, requests, p in (("stable", total - canary, stable_p),
                                     ("canary", canary, canary_p)):
            errors = min(requests, cluster * int(rng.poisson(requests * p / cluster)))
            row[f"{version}_requests"], row[f"{version}_errors"] = requests, errors
        if latency_ms:
            for version, median in zip(("stable", "canary"), latency_ms, strict=True):
                served = rng.lognormal(math.log(median), 0.5, row[f"{version}_requests"])
                for edge in EDGES_MS:
                    column = replay.bucket_column(version, edge)
                    row[column] = int((served <= edge).sum())
        out.append(row)
    return out


def write(path: Path, rows: list[dict]) -> Path:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def judged(path: Path, **settings) -> list[replay.StreamReplay]:
    return replay.replay(path, AnalysisSettings(**settings))


def cli_json(capsys, *argv: str) -> tuple[int, dict]:
    code = cli.main(["replay", *argv, "--output", "json"])
    return code, json.loads(capsys.readouterr().out)


# ---------------------------------------------------------------- the benchmark's scenarios


def test_an_a_a_stream_passes_and_no_judge_ever_fails(tmp_path):
    path = write(tmp_path / "aa.csv", simulate(1, rows=180, history=360))
    [found] = judged(path)
    assert found.verdict == "PASS", found.reason
    assert found.first_fail == {name: None for name in JUDGES}
    assert found.rollback_at is None
    assert (found.rows, found.history_rows, found.judged_rows, found.segments) == (540, 360,
                                                                                   180, 1)
    assert found.dispersion["error"]["source"] == "history"
    assert found.dispersion["latency"] is None  # no latency columns, no latency judge


def test_a_5x_error_regression_is_rolled_back_within_a_minute(tmp_path):
    path = write(tmp_path / "5x.csv", simulate(2, rows=120, history=360, canary_p=0.05))
    [found] = judged(path)
    assert found.verdict == "FAIL"
    assert found.rollback_at is not None and 10 <= found.rollback_at <= 60
    assert found.first_fail["error-rate-sequential"] == found.rollback_at
    assert found.first_fail["traffic-split"] is None
    assert found.reason.startswith("failed: error-rate-sequential")


def test_clustered_errors_on_identical_versions_pass_thanks_to_the_measured_dispersion(
        tmp_path, capsys):
    """Errors in clusters of 20 (stable's hour of history shows it); the canary happens to
    get more clusters. Counted as independent errors, that blames the canary."""
    path = write(tmp_path / "clustered.csv",
                 simulate(3, rows=180, history=360, cluster=20))
    code, shown = cli_json(capsys, str(path))
    [stream] = shown["streams"]
    assert code == ExitCode.OK and stream["verdict"] == "PASS"
    assert stream["dispersion"]["error"]["source"] == "history"
    assert 10 < stream["dispersion"]["error"]["value"] < 40  # E[C^2] / E[C] = 20

    config = tmp_path / "independent.yaml"
    config.write_text(yaml.safe_dump({"error_dispersion": 1}))
    code, shown = cli_json(capsys, str(path), "--config", str(config))
    [stream] = shown["streams"]
    assert code == ExitCode.FAILED and stream["verdict"] == "FAIL"
    assert stream["dispersion"]["error"] == {"value": 1.0, "source": "configured",
                                             "note": "error dispersion 1 as configured"}


def test_a_weight_change_starts_a_second_segment_judged_at_its_own_share(tmp_path):
    five = simulate(4, rows=60, history=60, share=0.05)
    quarter = simulate(5, rows=60, share=0.25, start=five[-1]["time"] + 10)
    path = write(tmp_path / "shift.csv", five + quarter)
    [found] = judged(path)
    assert found.verdict == "PASS", found.reason
    assert (found.segments, found.judged_rows) == (2, 120)
    # The same counts said to be at 25% throughout: the first hour's canary got far less.
    for row in five[60:]:
        row["canary_share"] = 0.25
    [mislabelled] = judged(write(tmp_path / "mislabelled.csv", five + quarter))
    assert mislabelled.segments == 1
    assert mislabelled.first_fail["traffic-split"] is not None
    assert mislabelled.verdict == "INCONCLUSIVE"  # a routing problem: never a PASS


def test_two_streams_in_one_file_are_judged_separately(tmp_path, capsys):
    good = simulate(6, rows=60, history=60, stream="checkout")
    bad = simulate(7, rows=60, history=60, canary_p=0.05, stream="search")
    interleaved = [row for pair in zip(good, bad, strict=True) for row in pair]
    code, shown = cli_json(capsys, str(write(tmp_path / "two.csv", interleaved)))
    assert code == ExitCode.FAILED
    assert [(s["stream"], s["verdict"]) for s in shown["streams"]] == [("checkout", "PASS"),
                                                                       ("search", "FAIL")]
    assert shown["streams"][0]["rollback_at"] is None
    assert shown["streams"][1]["rollback_at"] is not None


def test_a_canary_1_5x_slower_fails_the_latency_judge(tmp_path):
    path = write(tmp_path / "slow.csv",
                 simulate(8, rows=60, history=60, latency_ms=(50, 75)))
    [found] = judged(path)
    assert list(found.first_fail) == [*JUDGES, "latency-sequential"]
    assert found.first_fail["latency-sequential"] is not None
    assert found.first_fail["error-rate-sequential"] is None
    assert found.rollback_at == found.first_fail["latency-sequential"]
    assert found.verdict == "FAIL" and "latency-sequential" in found.reason
    assert found.dispersion["latency"]["source"] == "history"
    same = write(tmp_path / "same.csv", simulate(8, rows=60, history=60, latency_ms=(50, 50)))
    assert judged(same)[0].verdict == "PASS"


# ---------------------------------------------------------------- what the verdict means


def test_after_a_rollback_the_verdict_stays_fail_even_if_the_evidence_fades(tmp_path):
    bad = simulate(9, rows=6, history=60, canary_p=0.2)
    good = simulate(10, rows=400, canary_p=0.0, start=bad[-1]["time"] + 10)
    [found] = judged(write(tmp_path / "fades.csv", bad + good))
    assert found.rollback_at is not None and found.rollback_at <= 60
    assert found.verdict == "FAIL" and found.reason.startswith("failed: error-rate-sequential")
    # Judged at the last row alone, the evidence has faded: the canary is fine by then.
    totals = {key: sum(row[key] for row in bad[60:] + good) for key in replay.COUNTS}
    alone = seq.error_rate_test([seq.Segment(0.25, *totals.values())], alpha=0.05 / 2,
                                dispersion=found.dispersion["error"]["value"])
    assert alone.verdict.value == "PASS", alone.reason


def test_too_little_traffic_is_inconclusive_exit_3(tmp_path, capsys):
    path = write(tmp_path / "thin.csv", simulate(11, rows=5, rps=1))
    code, shown = cli_json(capsys, str(path))
    assert code == ExitCode.INCONCLUSIVE
    [stream] = shown["streams"]
    assert stream["verdict"] == "INCONCLUSIVE" and stream["rollback_at"] is None


def test_without_enough_history_the_fallback_dispersion_is_used_and_said(tmp_path, capsys):
    path = write(tmp_path / "nohistory.csv", simulate(12, rows=30, history=5))
    assert cli.main(["replay", str(path)]) == ExitCode.OK
    text = capsys.readouterr().out
    assert (f"error dispersion {seq.FALLBACK_DISPERSION:g} assumed: stream default's 5 history "
            "rows (canary_share 0) too thin to measure it") in text
    assert "(fewer than 30 intervals with traffic or 10 events) (fallback)" in text


def test_only_the_dispersion_history_before_the_rollout_is_measured(tmp_path):
    path = write(tmp_path / "long.csv", simulate(13, rows=30, history=720))  # 2 h of history
    assert judged(path)[0].history_rows == 360  # the default dispersion_history, 1h
    assert judged(path, dispersion_history="10m")[0].history_rows == 60


def test_rows_at_share_0_after_the_start_are_not_judged_and_end_a_segment(tmp_path):
    rows = simulate(14, rows=90, history=30)
    for row in rows[60:75]:
        row["canary_share"], row["canary_requests"], row["canary_errors"] = 0.0, 0, 0
    [found] = judged(write(tmp_path / "paused.csv", rows))
    assert (found.judged_rows, found.segments) == (75, 2)
    assert found.verdict == "PASS", found.reason


def test_iso_times_are_reported_in_seconds_after_the_first_row_with_a_share(tmp_path, capsys):
    rows = simulate(15, rows=60, history=60, canary_p=0.05)
    for row in rows:
        row["time"] = times.timestamp(1_714_564_800 + row["time"])  # 2024-05-01T12:00:00Z + t
    path = write(tmp_path / "iso.csv", rows)
    seconds = write(tmp_path / "seconds.csv", simulate(15, rows=60, history=60, canary_p=0.05))
    [by_iso], [by_seconds] = judged(path), judged(seconds)
    assert by_iso.time_origin == "2024-05-01T12:00:10Z"  # the first row with a share
    assert by_iso.rollback_at == by_seconds.rollback_at - 10  # that row is second 0
    assert cli.main(["replay", str(path)]) == ExitCode.FAILED
    assert "times in seconds after 2024-05-01T12:00:10Z" in capsys.readouterr().out


def test_only_rows_where_a_judge_may_fail_are_judged_and_the_result_is_the_same(
        tmp_path, monkeypatch):
    rows = simulate(16, rows=100, history=40, canary_p=0.02, latency_ms=(50, 56))
    for row in rows[90:]:
        row["canary_share"] = 0.3  # counts at 25% said to be 30%: the split fails
    path = write(tmp_path / "mixed.csv", rows)
    reference = [found.to_dict() for found in replay.replay(path, every_row=True)]
    calls = []
    original = seq.judge_sequential
    monkeypatch.setattr(seq, "judge_sequential",
                        lambda *a, **k: calls.append(1) or original(*a, **k))
    screened = [found.to_dict() for found in replay.replay(path)]
    assert screened == reference
    assert sum(v is not None for v in reference[0]["first_fail"].values()) >= 2
    assert len(calls) < 20  # not one per row


def test_thousands_of_rows_are_judged_with_a_handful_of_judge_calls(tmp_path, monkeypatch):
    path = write(tmp_path / "day.csv", simulate(17, rows=3000, history=360))
    calls = []
    original = seq.judge_sequential
    monkeypatch.setattr(seq, "judge_sequential",
                        lambda *a, **k: calls.append(1) or original(*a, **k))
    [found] = replay.replay(path)
    assert found.judged_rows == 3000 and found.verdict == "PASS"
    assert len(calls) <= 3


# ---------------------------------------------------------------- the output


def test_json_output_has_exactly_the_promised_shape(tmp_path, capsys):
    path = write(tmp_path / "shape.csv",
                 simulate(18, rows=30, history=30, latency_ms=(50, 50), stream="a"))
    code, shown = cli_json(capsys, str(path))
    assert code == ExitCode.OK
    assert list(shown) == ["streams"]
    [stream] = shown["streams"]
    assert {"stream", "first_fail", "rollback_at", "verdict"} <= set(stream)
    assert stream["stream"] == "a"
    assert list(stream["first_fail"]) == [*JUDGES, "latency-sequential"]
    assert all(value is None or isinstance(value, float) for value in
               [*stream["first_fail"].values(), stream["rollback_at"]])
    assert stream["verdict"] in ("PASS", "FAIL", "INCONCLUSIVE")
    assert set(stream["dispersion"]) == {"error", "latency"}


def test_text_output_says_each_judges_first_fail_the_rollback_and_the_reason(tmp_path, capsys):
    path = write(tmp_path / "text.csv", simulate(19, rows=60, history=360, canary_p=0.05))
    assert cli.main(["replay", str(path)]) == ExitCode.FAILED
    text = capsys.readouterr().out
    [found] = judged(path)
    assert text.startswith("stream default: 420 rows, 60 judged in 1 segment(s), 360 of "
                           "stable's history")
    assert f"error-rate-sequential  first fails at {found.rollback_at:g}s" in text
    assert "traffic-split          never fails" in text
    assert f"rollback at {found.rollback_at:g}s" in text
    phi = found.dispersion["error"]["value"]
    assert (f"error dispersion {phi:.2f} measured on stream default's 360 history rows "
            "(canary_share 0) (history)") in text
    assert "verdict FAIL \u2014 failed: error-rate-sequential" in text


def test_the_console_command_replays_a_file(tmp_path):
    path = write(tmp_path / "run.csv", simulate(20, rows=30, history=30, canary_p=0.05))
    done = subprocess.run([sys.executable, "-m", "canarykit", "replay", str(path), "--output",
                           "json"], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == ExitCode.FAILED, done.stderr
    assert json.loads(done.stdout)["streams"][0]["verdict"] == "FAIL"


# ---------------------------------------------------------------- bad files and settings


def bad_file(tmp_path: Path, text: str, name: str = "bad.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


GOOD_ROW = "10,0.25,750,7,250,2"


@pytest.mark.parametrize(("text", "named", "problem"), [
    ("time,canary_share,stable_requests,stable_errors,canary_requests\n10,0.25,1,0,1\n",
     "row 1, column canary_errors", "is missing"),
    (f"{HEADER},stable_erors\n{GOOD_ROW},1\n", "row 1, column stable_erors",
     "is not a replay column (known: stream, time"),
    (f"{HEADER}\n{GOOD_ROW}\n20,0.25,750,seven,250,2\n", "row 3, column stable_errors",
     "is not a number"),
    (f"{HEADER}\n{GOOD_ROW}\n20,0.25,750,7,-1,0\n", "row 3, column canary_requests",
     "must be a count >= 0"),
    (f"{HEADER}\n{GOOD_ROW}\n20,0.25,750,7,250,251\n", "row 3, column canary_errors",
     "must not exceed canary_requests (250)"),
    (f"{HEADER}\n20,1.5,750,7,250,2\n", "row 2, column canary_share",
     "must be a fraction in [0, 1)"),
    (f"{HEADER}\n20,25,750,7,250,2\n", "row 2, column canary_share", "not percent"),
    (f"{HEADER}\n20,-0.1,750,7,250,2\n", "row 2, column canary_share",
     "must be a fraction in [0, 1)"),
    (f"{HEADER}\n20,1,750,7,250,2\n", "row 2, column canary_share",
     "nothing to compare it with"),
    (f"{HEADER}\n{GOOD_ROW}\n10,0.25,750,7,250,2\n", "row 3, column time",
     "must be later than row 2 of stream default"),
    (f"{HEADER}\n{GOOD_ROW}\nyesterday,0.25,750,7,250,2\n", "row 3, column time",
     "must be seconds or an ISO 8601 time"),
    (f"{HEADER}\n2024-05-01T12:00:00Z,0.25,750,7,250,2\n{GOOD_ROW}\n", "row 3, column time",
     "but the rows before give ISO 8601 times"),
    (f"{HEADER}\n{GOOD_ROW}\n20,0.25,750,7\n", "row 3", "has 4 values, the header names 6"),
    (f"stream,{HEADER}\n,{GOOD_ROW}\n", "row 2, column stream", "is empty"),
    (f"{HEADER},stable_le_100,stable_le_inf,canary_le_50,canary_le_inf\n"
     f"{GOOD_ROW},700,750,200,250\n", "row 1, column stable_le_100",
     "has no canary_le_100: both versions need the same bucket edges"),
    (f"{HEADER},stable_le_100,canary_le_100\n{GOOD_ROW},700,200\n",
     "row 1, column stable_le_inf", "the last bucket (inf) counts every request"),
    (f"{HEADER},stable_le_100,stable_le_inf\n{GOOD_ROW},700,750\n",
     "row 1, column canary_le_*", "latency needs canary_le_EDGE columns"),
    (f"{HEADER},stable_le_100,stable_le_inf,canary_le_100,canary_le_inf\n"
     f"{GOOD_ROW},700,650,200,250\n", "row 2, column stable_le_inf",
     "must be >= the count within the smaller edge (700)"),
    (f"{HEADER},time\n{GOOD_ROW},10\n", "row 1, column time", "appears twice"),
    (f"{HEADER}\n", "FILE", "has a header but no data rows"),
    ("", "FILE", "is empty"),
    ("\n\n", "FILE", "is empty"),
])
def test_a_bad_file_gets_one_error_naming_the_row_and_column(tmp_path, capsys, text, named,
                                                             problem):
    path = bad_file(tmp_path, text)
    with pytest.raises(BadInput) as refused:
        replay.read_replay_file(path)
    assert named in refused.value.field and problem in refused.value.problem
    assert cli.main(["replay", str(path)]) == ExitCode.BAD_INPUT
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and named in error and problem in error


def test_row_numbers_are_the_files_own_even_after_blank_lines(tmp_path):
    path = bad_file(tmp_path, f"{HEADER}\n{GOOD_ROW}\n\n20,0.25,x,7,250,2\n")
    with pytest.raises(BadInput, match=r"bad.csv row 4, column stable_requests: is not a "):
        replay.read_replay_file(path)


def test_a_file_that_is_not_utf8_is_refused_naming_the_row(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes(f"{HEADER}\n{GOOD_ROW}\n".encode() + b"20,0.25,750,7,250,2 \xe9t\xe9\n")
    with pytest.raises(BadInput, match=r"latin1.csv row 3: is not UTF-8 text \(byte 0xe9\)"):
        replay.read_replay_file(path)


@pytest.mark.parametrize(("make", "problem"), [
    (lambda tmp: tmp, "is a directory, not a CSV file"),
    (lambda tmp: tmp / "missing.csv", "does not exist"),
])
def test_a_directory_or_a_missing_file_is_refused(tmp_path, capsys, make, problem):
    assert cli.main(["replay", str(make(tmp_path))]) == ExitCode.BAD_INPUT
    assert f"FILE: {problem}" in capsys.readouterr().err


def test_a_utf8_bom_and_iso_times_with_offsets_are_read(tmp_path):
    path = tmp_path / "excel.csv"
    path.write_bytes("\ufeff".encode() + f"{HEADER}\n2024-05-01T14:00:10+02:00,0.25,750,7,"
                     "250,2\n".encode())
    [stream] = replay.read_replay_file(path).streams
    assert stream.rows[0].time == 1_714_564_810


@pytest.mark.parametrize(("config", "named"), [
    ({"alpah": 0.01}, "alpah"),
    ({"alpha": 2}, "alpha"),
    ({"error_dispersion": 0.5}, "error_dispersion"),
    (["alpha"], "--config"),
])
def test_a_bad_config_is_refused_with_exit_2_naming_the_setting(tmp_path, capsys, config,
                                                                named):
    path = write(tmp_path / "ok.csv", simulate(21, rows=5))
    settings = tmp_path / "analysis.yaml"
    settings.write_text(yaml.safe_dump(config))
    assert cli.main(["replay", str(path), "--config", str(settings)]) == ExitCode.BAD_INPUT
    assert f"canarykit: error: {named}" in capsys.readouterr().err


def test_a_plan_analysis_section_is_accepted_as_config(tmp_path):
    settings = tmp_path / "analysis.yaml"
    settings.write_text(yaml.safe_dump({"window": "4m", "interval": "10s", "until_verdict": True,
                                        "max_duration": "10m", "alpha": 0.01}))
    assert replay.read_config(str(settings)).alpha == 0.01


@pytest.mark.parametrize(("text", "problem"), [
    ("alpha: 0.01\nalpha: 0.5\n", "duplicate key alpha at line 2"),
    ("alpha: " + "[" * 500 + "]" * 500 + "\n", "nesting"),
    ("alpha: 0.01\nerror_dispersion: " + "9" * 400 + "\n", "error_dispersion"),
])
def test_a_hostile_config_is_refused_with_exit_2_and_one_line(tmp_path, capsys, text, problem):
    path = write(tmp_path / "ok.csv", simulate(21, rows=5))
    settings = tmp_path / "analysis.yaml"
    settings.write_text(text)
    assert cli.main(["replay", str(path), "--config", str(settings)]) == ExitCode.BAD_INPUT
    [line] = capsys.readouterr().err.splitlines()
    assert problem in line and len(line) < 300
