"""The report shows Flagger's analysis options: each check of an analysis of several
iterations, custom metrics (charted, with their limits) and dry-run judges marked as such."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from canarykit.analysis.judges import Judgement, Verdict
from canarykit.rollout import release as releases
from canarykit.rollout import report
from tests.release_fixture import CANARY, RELEASE, SERVICE, iso, write_release
from tests.rollout.test_report import edit_result, embedded_figures, section

BURN = "metric:error-budget-burn"
LATENCY = "metric:checkout-latency"


def judged(judge: str, verdict: Verdict, value: float, **options) -> dict:
    return Judgement(judge, verdict, f"{judge} {value:g}", {"value": value},
                     {"min_value": None, "max_value": 0.01}, **options).to_dict()


def with_options(result: dict) -> None:
    """The analyze-5 result as an analysis of 3 iterations with custom metrics would record."""
    result["decision"]["judgements"] += [judged(BURN, Verdict.PASS, 0.004),
                                         judged(LATENCY, Verdict.FAIL, 0.2, dry_run=True)]
    result["evidence"] = {"threshold": 2, "iterations": [
        {"iteration": n, "verdict": verdict, "reason": f"check {n} said {verdict}",
         "start": iso(44 + 80 * (n - 1)), "end": iso(44 + 80 * n), "failed_checks": failed}
        for n, verdict, failed in ((1, "FAIL", 1), (2, "PASS", 1), (3, "PASS", 1))]}
    stamps = [result["metrics"][i]["timestamp"] for i in range(0, 60, 10)]
    result["metrics"] += [{"timestamp": t, "version": CANARY, "metric": name, "value": value}
                          for t in stamps for name, value in ((BURN, 0.004), (LATENCY, 0.2))]


@pytest.fixture
def release(tmp_path: Path) -> Path:
    folder = write_release(tmp_path / SERVICE / RELEASE)
    edit_result(next(folder.glob("*-analyze-5.ipynb")), with_options)
    return folder


def test_dry_run_judges_are_marked_in_the_judge_table(release):
    judges = section(report.build_report(release).read_text(encoding="utf-8"), "judges")
    rows = re.findall(r"<tr( class=\"dry-run\")?><td>([^<]+)(.*?)</tr>", judges, re.S)
    marked = {name for css, name, _ in rows if css}
    assert marked == {LATENCY}
    dry_row = next(rest for css, name, rest in rows if name == LATENCY)
    assert "dry-run (does not decide)" in dry_row
    burn_row = next(rest for css, name, rest in rows if name == BURN)
    assert "dry-run" not in burn_row and "value: 0.004" in burn_row


def test_each_check_of_the_analysis_is_listed_with_the_failed_checks(release):
    judges = section(report.build_report(release).read_text(encoding="utf-8"), "judges")
    table = re.search(r'<table class="grid checks">(.*?)</table>', judges, re.S).group(1)
    assert "threshold 2" in table
    rows = re.findall(r"<tr><td>(\d)</td><td>.*?>(PASS|FAIL)<.*?<td>(\d)</td>", table, re.S)
    assert rows == [("1", "FAIL", "1"), ("2", "PASS", "1"), ("3", "PASS", "1")]
    assert judges.count('class="grid checks"') == 1  # analyze-25 ran one check


def test_custom_metrics_are_charted_with_their_limits_dry_run_ones_said(release):
    page = report.build_report(release).read_text(encoding="utf-8")
    figures = embedded_figures(page)
    assert list(figures) == ["traffic", "errors", "latency", "custom", "evidence"]
    names = [trace["name"] for trace in figures["custom"]["data"]]
    assert f"checkout-latency \u2014 dry-run (does not decide) ({CANARY})" in names
    assert f"error-budget-burn ({CANARY})" in names
    limits = [t for t in figures["custom"]["data"] if t["name"] == "error-budget-burn max"]
    assert limits and set(limits[0]["y"]) == {0.01}


def test_the_frames_say_which_judgements_were_dry_run(release):
    decisions = releases.load_release(release)["decisions"]
    assert set(decisions[decisions["dry_run"]]["judge"]) == {LATENCY}


def test_a_release_without_custom_metrics_has_no_custom_chart(tmp_path):
    folder = write_release(tmp_path / SERVICE / RELEASE)
    assert "custom" not in releases.release_figures(releases.load_release(folder),
                                                    evidence=True)
