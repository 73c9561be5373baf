"""The release report: built from a synthetic release folder, opened in headless Chromium."""

from __future__ import annotations

import base64
import gzip
import html
import json
import re
import shutil
import stat
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import nbformat
import pytest

from canarykit.cli import main as cli
from canarykit.rollout import release as releases
from canarykit.rollout import report, runbook
from tests.release_fixture import (
    CANARY,
    HOSTILE,
    HOSTILE_IMG,
    RELEASE,
    SERVICE,
    STABLE,
    write_release,
)

MAX_BYTES = 2_500_000
SCREENSHOT_COPY = Path(__file__).resolve().parents[2] / "reports/test-output/report-screenshot.png"
ESCAPED_HOSTILE = "&lt;script&gt;alert(1)&lt;/script&gt;"


@pytest.fixture
def release(tmp_path: Path) -> Path:
    return write_release(tmp_path / SERVICE / RELEASE)


def charts_in(page: str) -> int:
    return len(re.findall(r'class="chart ck-chart"', page))


def section(page: str, section_id: str) -> str:
    match = re.search(rf'<section id="{section_id}">(.*?)</section>', page, re.S)
    assert match, f"no section {section_id}"
    return match.group(1)


def embedded_figures(page: str) -> dict[str, dict]:
    """chart name -> the figure JSON the page embeds for it."""
    found = re.findall(r'<script type="application/json" id="chart-([a-z]+)-json">(.*?)</script>',
                       page, re.S)
    return {name: json.loads(text) for name, text in found}


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs) -> None:
        self.links += [value or "" for name, value in attrs
                       if name in ("href", "src", "action", "formaction", "xlink:href")]


def links_in(page: str) -> list[str]:
    """Every URL an element of the page links to or loads (what the browser sees)."""
    parser = _Links()
    parser.feed(page)
    return parser.links


def edit_result(notebook: Path, change) -> None:
    """Rewrite the result recorded in an executed notebook."""
    nb = nbformat.read(str(notebook), as_version=4)
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            if runbook.RESULT_MIME in output.get("data", {}):
                change(output["data"][runbook.RESULT_MIME])
    nbformat.write(nb, str(notebook))


# ---------------------------------------------------------------- the page


def test_report_is_written_into_the_release_folder(release):
    path = report.build_report(release)
    assert path == release / "report.html"
    page = path.read_text(encoding="utf-8")
    for section_id in ("summary", "timeline", "charts", "judges", "changes", "audit"):
        assert f'<section id="{section_id}">' in page
    assert "ROLLED BACK" in section(page, "summary")
    assert f"{STABLE} → {CANARY}" in page
    assert "9m 00s" in section(page, "summary")  # duration from started/finished


def test_timeline_links_every_executed_notebook_relatively(release):
    page = report.build_report(release).read_text(encoding="utf-8")
    timeline = section(page, "timeline")
    notebooks = sorted(p.name for p in release.glob("*.ipynb"))
    assert len(notebooks) == 8
    for name in notebooks:
        assert f'<a href="./{name}">' in timeline
    assert timeline.count('<tr class="phase"') == 8
    assert "canarykit-admin" in timeline and "ci-runner-1:4242" in timeline


def test_a_phase_that_died_is_shown_with_its_error(release):
    page = report.build_report(release).read_text(encoding="utf-8")
    errors = re.findall(r'<tr class="phase-error">(.*?)</tr>', section(page, "timeline"), re.S)
    assert len(errors) == 1
    assert "ConcurrentChangeError: VirtualService shop/reviews changed by someone else" in errors[0]


def test_a_phase_whose_notebook_is_missing_says_so(release):
    (release / "06-shift-25.ipynb").unlink()
    page = report.build_report(release).read_text(encoding="utf-8")
    assert "notebook 06-shift-25.ipynb is missing" in section(page, "timeline")


def test_notebooks_the_driver_did_not_list_yet_are_still_reported(release):
    summary = json.loads((release / "release.json").read_text())
    summary["phases"] = summary["phases"][:-1]  # the driver died before rewriting release.json
    (release / "release.json").write_text(json.dumps(summary))
    page = report.build_report(release).read_text(encoding="utf-8")
    assert '<a href="./08-rollback.ipynb">' in section(page, "timeline")


def test_judge_table_shows_verdicts_reasons_queries_values_and_thresholds(release):
    judges = section(report.build_report(release).read_text(encoding="utf-8"), "judges")
    assert "5. analyze-5" in judges and "7. analyze-25" in judges
    assert judges.count('<span class="badge bad">FAIL</span>') == 4  # decision + 3 judges
    assert "canary success rate 80.3% &lt; minimum 99%" in judges
    assert "<code>1 - (sum by (destination_version) (rate(istio_requests_total{reporter=" in judges
    assert 'response_code=~"5.."' in html.unescape(judges)
    assert "max_p99_ms: 500" in judges and "canary_p99_ms: 512.4" in judges
    assert "p_value: 4.7e-05" in judges


def test_every_change_is_shown_with_its_diff(release):
    changes = section(report.build_report(release).read_text(encoding="utf-8"), "changes")
    assert changes.count('<pre class="diff">') == 4
    assert "add-header-route on VirtualService shop/reviews" in changes
    assert '<span class="add">+  - name: canarykit-internal</span>' in changes
    assert '<span class="del">-      weight: 25</span>' in changes


def test_intact_audit_chain_is_reported_with_its_record_count(release):
    audit_part = section(report.build_report(release).read_text(encoding="utf-8"), "audit")
    assert "INTACT" in audit_part and "BROKEN" not in audit_part
    assert "4 records" in audit_part


def test_an_edited_audit_record_shows_the_chain_broken(release):
    log = release / "audit.jsonl"
    lines = log.read_text().splitlines()
    record = json.loads(lines[1])
    record["actor"] = "mallory"
    lines[1] = json.dumps(record, sort_keys=True)
    log.write_text("\n".join(lines) + "\n")
    audit_part = section(report.build_report(release).read_text(encoding="utf-8"), "audit")
    assert "BROKEN" in audit_part and "line 2: record was edited" in audit_part


def test_audit_records_cut_off_the_end_show_the_chain_broken(release):
    log = release / "audit.jsonl"
    lines = log.read_text().splitlines()
    log.write_text("\n".join(lines[:-1]) + "\n")  # still a valid chain, one record short
    audit_part = section(report.build_report(release).read_text(encoding="utf-8"), "audit")
    assert "BROKEN" in audit_part and "records were removed from the end" in audit_part


def test_a_missing_audit_log_is_not_reported_intact(release):
    (release / "audit.jsonl").unlink()
    audit_part = section(report.build_report(release).read_text(encoding="utf-8"), "audit")
    assert "BROKEN" in audit_part and "does not exist" in audit_part


# ---------------------------------------------------------------- charts


def test_configured_weights_step_at_each_phase_finish_and_shares_are_percent(release):
    charts = _figures(release)
    traces = {trace.name: trace for trace in charts["traffic"].data}
    configured = traces[f"{CANARY} configured weight"]
    assert list(configured.y) == [0, 0, 5, 25, 0, 0]  # last point extends to the end
    assert configured.line.shape == "hv"
    observed = traces[f"{CANARY} observed share"]
    assert 20 < max(observed.y) <= 35  # fractions shown as percent


def test_five_xx_is_shown_as_percent_of_requests_from_success_rate(release):
    charts = _figures(release)
    errors = {trace.name: trace for trace in charts["errors"].data}
    assert charts["errors"].layout.yaxis.title.text == "% of requests"
    assert max(errors[CANARY].y) > 10 and max(errors[STABLE].y) < 2


def test_latency_has_p50_p90_p99_per_version_and_evidence_one_point_per_analysis(release):
    charts = _figures(release)
    names = {trace.name for trace in charts["latency"].data}
    assert names == {f"{v} {p}" for v in (STABLE, CANARY) for p in ("p50", "p90", "p99")}
    evidence = charts["evidence"].data[0]
    assert list(evidence.y) == [1.0, 4.7e-05]


def test_the_report_embeds_exactly_the_figures_of_the_release_reader(release):
    page = report.build_report(release).read_text(encoding="utf-8")
    embedded = embedded_figures(page)
    drawn = _figures(release)
    assert list(embedded) == ["traffic", "errors", "latency", "evidence"] == list(drawn)
    for name, figure in drawn.items():
        assert [t["name"] for t in embedded[name]["data"]] == [t.name for t in figure.data]
        assert embedded[name] == json.loads(figure.to_json()), name


def test_the_notebook_gets_the_same_charts_without_the_evidence_one(release):
    frames = releases.load_release(release)
    notebook = releases.release_figures(frames)
    in_report = releases.release_figures(frames, evidence=True)
    assert list(notebook) == ["traffic", "errors", "latency"]
    for name, figure in notebook.items():
        assert figure.to_json() == in_report[name].to_json()


def test_missing_metrics_leave_the_charts_in_place_saying_no_data(release):
    for notebook in release.glob("*.ipynb"):
        edit_result(notebook, lambda result: result.update(metrics=[], weights=None,
                                                           decision=None))
    page = report.build_report(release).read_text(encoding="utf-8")
    assert charts_in(page) == 4
    assert page.count("no data: ") == 4


def _figures(folder: Path):
    return releases.release_figures(releases.load_release(folder), evidence=True)


# ---------------------------------------------------------------- self-contained, escaped


def test_report_of_a_six_phase_release_is_at_most_2_5_megabytes(release):
    assert report.build_report(release).stat().st_size <= MAX_BYTES


def test_plotly_js_is_embedded_exactly_once_and_nothing_is_loaded_from_elsewhere(release):
    page = report.build_report(release).read_text(encoding="utf-8")
    packed = report.packed_plotly()
    assert page.count(packed) == 1
    assert gzip.decompress(base64.b64decode(packed)) == report.PLOTLY_JS.read_bytes()
    assert page.count("<script") == 2 + charts_in(page)  # bundle, loader, one JSON per chart
    assert not re.search(r"<script[^>]*\bsrc=", page)
    assert not re.search(r"https?://(cdn|unpkg|fonts)", page)
    assert "require.js" not in page and "MathJax" not in page


def test_hostile_strings_never_appear_unescaped(release):
    page = report.build_report(release).read_text(encoding="utf-8")
    assert HOSTILE not in page and HOSTILE_IMG not in page
    assert "alert(1)</script>" not in page and "<img" not in page
    assert page.count(ESCAPED_HOSTILE) >= 4  # reason, decision, judgement, parameter, notes


def test_hostile_markup_in_a_phase_error_and_a_judge_reason_shows_as_text(release):
    page = report.build_report(release).read_text(encoding="utf-8")
    shown = "&lt;img src=x onerror=&#34;alert(2)&#34;&gt;"
    error_row = re.search(r'<tr class="phase-error">(.*?)</tr>', section(page, "timeline"), re.S)
    assert error_row and shown in error_row.group(1)
    assert f"canary success rate 80.3% &lt; minimum 99% {shown}" in section(page, "judges")


def test_hostile_markup_in_figure_labels_cannot_close_the_script_element(release):
    page = report.build_report(release).read_text(encoding="utf-8")
    evidence = embedded_figures(page)["evidence"]
    hover = " ".join(evidence["data"][0]["hovertext"])
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in hover  # plotly shows it as text
    raw = re.search(r'id="chart-evidence-json">(.*?)</script>', page, re.S).group(1)
    assert "<" not in raw and ">" not in raw


def test_every_link_is_a_relative_link_to_a_notebook_read_from_the_folder(release):
    summary = json.loads((release / "release.json").read_text())
    hostile = {0: "javascript:alert(1)", 1: "JaVaScRiPt:alert(2)", 2: "vbscript:msgbox",
               3: "data:text,x"}
    shutil.copyfile(release / summary["phases"][0]["notebook"], release / hostile[0])
    for number, name in hostile.items():
        summary["phases"][number]["notebook"] = name
    summary["phases"][4]["name"] = "javascript:alert(3)"
    (release / "release.json").write_text(json.dumps(summary))
    page = report.build_report(release).read_text(encoding="utf-8")
    links = links_in(page)
    # the file named "javascript:alert(1)" and the 8 notebooks (4 no longer listed, still found)
    assert len(links) == 9
    for link in links:
        assert link.startswith("./") and ":" not in link and "/" not in link[2:], link
        assert (release / unquote(link[2:])).is_file(), link
    assert '<a href="./javascript%3Aalert%281%29">' in page  # a file named so: a file
    assert "javascript:alert(1)</a>" in page  # shown as text
    for missing in ("JaVaScRiPt:alert(2)", "vbscript:msgbox", "data:text,x"):  # no file: text
        assert f"<td>{missing}</td>" in section(page, "timeline")
    assert not re.search(r"(?i)\b(href|src)\s*=\s*[\"']?\s*(javascript|vbscript|data):", page)


def test_json_inside_a_script_element_cannot_close_it():
    value = {"reason": "</script><script>alert(1)</script> & more"}
    text = report.environment().from_string("{{ value|tojson }}").render(value=value)
    assert "<" not in text and ">" not in text and "&" not in text
    assert json.loads(text) == value


def test_times_show_in_utc_and_only_the_time_of_day_on_the_release_day():
    day = "2026-11-27T09:00:00Z"
    assert report.clock("2026-11-27T10:43:26+01:00", day) == "09:43:26"
    assert report.clock("2026-11-28T00:00:05Z", day) == "2026-11-28 00:00:05 UTC"
    assert report.clock(None, day) == "–"
    assert report.rfc3339(1795775006) == "2026-11-27T10:23:26Z"


# ---------------------------------------------------------------- in a browser


def test_report_opens_offline_in_chromium_with_every_chart_drawn(release, chromium, tmp_path):
    path = report.build_report(release)
    expected = charts_in(path.read_text(encoding="utf-8"))
    assert expected == 4
    page = chromium.open_page(path, charts_expected=expected, text_selector="#verdict",
                              screenshot=tmp_path / "report-screenshot.png")
    SCREENSHOT_COPY.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(page.screenshot, SCREENSHOT_COPY)
    assert page.console_errors == []
    assert page.requests == []
    assert page.dialogs == []
    assert page.charts_drawn == expected and page.charts_counter == expected
    assert "ROLLED BACK" in page.text and "FAIL" in page.text
    assert HOSTILE in page.text  # shown as text, not run
    assert page.screenshot.stat().st_size > 50_000
    # the hostile markup made no element: only the report's own scripts, no image at all
    assert chromium.evaluate("document.scripts.length") == 2 + expected
    assert chromium.evaluate("document.images.length") == 0
    assert HOSTILE_IMG in chromium.evaluate("document.querySelector('#timeline').innerText")


def test_a_report_without_data_still_draws_every_chart_in_chromium(tmp_path, chromium):
    folder = tmp_path / "empty"
    folder.mkdir()
    (folder / "release.json").write_text(json.dumps({
        "service": "reviews", "release": "r1", "status": "failed", "reason": "preflight died",
        "phases": [{"index": 1, "name": "preflight", "notebook": "01-preflight.ipynb"}],
    }))
    path = report.build_report(folder)
    page = chromium.open_page(path, charts_expected=4, text_selector="#timeline",
                              screenshot=tmp_path / "empty.png")
    assert page.console_errors == [] and page.requests == [] and page.charts_drawn == 4
    assert "notebook 01-preflight.ipynb is missing" in page.text


# ---------------------------------------------------------------- command line


def _run(folder: Path) -> int:
    """`canarykit report build FOLDER`: through the CLI, which maps errors to exit codes."""
    return cli.main(["report", "build", str(folder)])


def test_setting_up_the_command_loads_no_heavy_module():
    code = ("import sys, canarykit.rollout.report; "
            "print([m for m in ('pandas', 'plotly', 'nbformat', 'jinja2') if m in sys.modules])")
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=True).stdout
    assert shown.strip() == "[]"


def test_report_build_exits_0_and_prints_the_report_path(release, capsys):
    assert _run(release) == 0
    assert capsys.readouterr().out.strip() == f"report: {release / 'report.html'}"


def test_report_build_of_a_folder_without_release_json_exits_2_naming_it(tmp_path, capsys):
    assert _run(tmp_path) == 2
    err = capsys.readouterr().err
    assert "is not a release folder" in err and str(tmp_path) in err
    assert not (tmp_path / "report.html").exists()


def test_report_build_of_a_missing_folder_exits_2(tmp_path, capsys):
    assert _run(tmp_path / "nope") == 2
    assert "no such directory" in capsys.readouterr().err


def test_report_build_of_unreadable_release_json_exits_2(tmp_path, capsys):
    (tmp_path / "release.json").write_text("{not json")
    assert _run(tmp_path) == 2
    assert "release.json" in capsys.readouterr().err


# ---------------------------------------------------------------- nothing escapes its folder

OUTSIDE_SECRET = "k8s-token-0f9e8d7c6b5a"  # what an outside file holds


def outside_file(tmp_path: Path, name: str = "kubeconfig") -> Path:
    """A file outside the release folder holding a secret (a kubeconfig with its token)."""
    path = tmp_path / "outside" / name
    path.parent.mkdir(exist_ok=True)
    path.write_text(f"users:\n- name: admin\n  user:\n    token: {OUTSIDE_SECRET}\n")
    return path


def outside_notebook(tmp_path: Path, release: Path) -> Path:
    """An executed notebook outside the release folder whose notes hold the secret."""
    path = tmp_path / "outside" / "01-preflight.ipynb"
    path.parent.mkdir(exist_ok=True)
    shutil.copyfile(release / "01-preflight.ipynb", path)
    edit_result(path, lambda result: result.update(notes=[f"token {OUTSIDE_SECRET}"]))
    return path


def refused(folder: Path, capsys) -> str:
    """`report build FOLDER` exits 2 with one line naming the problem, writes no report and
    shows nothing of the outside file; the line."""
    assert _run(folder) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("canarykit: error: ") and len(err) < 400
    assert OUTSIDE_SECRET not in err
    output = folder / "report.html"
    assert not output.exists() or not stat.S_ISREG(output.lstat().st_mode)
    return err


def test_a_symlinked_report_html_is_refused_and_its_target_untouched(release, tmp_path,
                                                                     capsys):
    target = outside_file(tmp_path, "bashrc")
    before = target.read_bytes()
    (release / "report.html").symlink_to(target)
    assert "report.html: is a symbolic link" in refused(release, capsys)
    assert target.read_bytes() == before
    assert (release / "report.html").is_symlink()  # not replaced either
    assert [p.name for p in target.parent.iterdir()] == ["bashrc"]


def test_a_report_html_that_is_a_folder_is_refused(release, capsys):
    (release / "report.html").mkdir()
    assert "report.html: exists and is not a regular file" in refused(release, capsys)


def test_a_symlinked_plan_yaml_is_refused_and_nothing_of_it_embedded(release, tmp_path,
                                                                    capsys):
    (release / "plan.yaml").unlink()
    (release / "plan.yaml").symlink_to(outside_file(tmp_path))
    assert "plan.yaml: is refused: only regular files inside the release folder are read" \
        in refused(release, capsys)


@pytest.mark.parametrize("kind", ["absolute", "parent", "nested"])
def test_a_notebook_path_leaving_the_folder_is_refused_and_nothing_embedded(
        release, tmp_path, capsys, kind):
    outside = outside_notebook(tmp_path, release)
    name = {"absolute": str(outside), "parent": f"../../../outside/{outside.name}",
            "nested": f"sub/../{outside.name}"}[kind]
    summary = json.loads((release / "release.json").read_text())
    summary["phases"][0]["notebook"] = name
    (release / "release.json").write_text(json.dumps(summary))
    err = refused(release, capsys)
    assert "phases[0].notebook: must name a file inside the release folder" in err


@pytest.mark.parametrize("name", ["01-preflight.ipynb", "audit.jsonl", "release.json",
                                  "notifications.jsonl"])
def test_a_symlinked_file_of_the_folder_is_refused_and_nothing_embedded(
        release, tmp_path, capsys, name):
    outside = (outside_notebook(tmp_path, release) if name.endswith(".ipynb")
               else outside_file(tmp_path))
    if name == "notifications.jsonl":
        summary = json.loads((release / "release.json").read_text())
        (release / "release.json").write_text(json.dumps({**summary, "notifications": name}))
    (release / name).unlink(missing_ok=True)
    (release / name).symlink_to(outside)
    assert f"{name}: is refused: only regular files inside the release folder are read" \
        in refused(release, capsys)


def test_files_release_json_names_must_be_beside_it(release, tmp_path, capsys):
    outside = outside_file(tmp_path)
    summary = json.loads((release / "release.json").read_text())
    for field_name in ("plan", "notifications"):
        (release / "release.json").write_text(json.dumps({**summary, field_name: str(outside)}))
        assert f"release.json {field_name}: must name a file inside the release folder" \
            in refused(release, capsys)


# ---------------------------------------------------------------- no secret escapes

PASSWORD = "pa55w0rd-Xq7"


def test_the_report_never_shows_a_password_from_a_url(release):
    plan = (release / "plan.yaml").read_text().replace(
        "http://127.0.0.1:9090", f"http://reader:{PASSWORD}@prometheus:9090")
    (release / "plan.yaml").write_text(plan)
    summary = json.loads((release / "release.json").read_text())
    summary["reason"] = f"rolled back; Prometheus at https://admin:{PASSWORD}@prom failed"
    summary["notifications"] = "notifications.jsonl"
    summary["webhooks"] = [{"kind": "pre-rollout", "name": f"https://ci:{PASSWORD}@ci.example",
                            "ok": True, "reason": "", "at": "2024-05-01T12:00:00Z"}]
    (release / "release.json").write_text(json.dumps(summary))
    (release / "notifications.jsonl").write_text(json.dumps({
        "channel": "ops", "kind": "webhook", "event": "rollback", "ok": False,
        "error": f"POST http://hook:{PASSWORD}@hooks.example answered 500"}) + "\n")
    edit_result(release / "05-analyze-5.ipynb", lambda result: result.update(
        notes=[f"queried http://reader:{PASSWORD}@prometheus:9090"],
        decision={**result["decision"], "reason": f"see http://x:{PASSWORD}@grafana"}))
    page = report.build_report(release).read_text(encoding="utf-8")
    assert PASSWORD not in page and "pa55w0rd" not in page
    assert "url: http://prometheus:9090" in section(page, "details")  # the plan, shown
    assert "queried http://prometheus:9090" in page
    assert "POST http://hooks.example answered 500" in section(page, "people")


def test_credential_looking_lines_are_withheld_from_the_report(release):
    token = "ghp_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8"
    edit_result(release / "02-internal-canary.ipynb", lambda result: result.update(
        notes=[f"pushed with {token}", "plain note"],
        parameters={**result["parameters"], "header": "-----BEGIN RSA PRIVATE KEY-----\nMIIB"}))
    with (release / "plan.yaml").open("a") as plan:
        plan.write("password: s3cr3t-in-the-plan\n")
    page = report.build_report(release).read_text(encoding="utf-8")
    for secret in (token, "MIIB", "s3cr3t-in-the-plan"):
        assert secret not in page
    assert page.count("(withheld: looked like a credential)") >= 3
    assert "plain note" in page


# ---------------------------------------------------------------- hostile release.json


@pytest.mark.parametrize(("change", "named"), [
    ({"phases": "all of them"}, "release.json phases: must be a list of objects"),
    ({"phases": [1, 2]}, "release.json phases: must be a list of objects"),
    ({"phases": [{"index": "3", "name": "x"}]}, "phases[0].index: must be a whole number"),
    ({"phases": [{"index": True}]}, "phases[0].index: must be a whole number"),
    ({"phases": [{"index": 10 ** 30}]}, "phases[0].index: must be a whole number"),
    ({"phases": [{"index": 1, "notebook": ["a.ipynb"]}]}, "phases[0].notebook: must name"),
    ({"phases": [{"index": 1, "name": {"x": 1}}]}, "phases[0].name: must be text"),
    ({"phases": [{"index": 1, "approval": "yes"}]}, "phases[0].approval: must be an object"),
    ({"phases": [{"index": 1, "started": "yesterday"}]}, "phases[0].started: must be a time"),
    ({"reason": "x" * 10_000_000}, "release.json reason: is longer than 10,000"),
    ({"service": ["reviews"]}, "release.json service: must be text"),
    ({"started": "not a time"}, "release.json started: must be a time"),
    ({"finished": 1e300}, "release.json finished: must be a time"),
    ({"finished": "9999-12-31T23:59:59-05:00"}, "release.json finished: must be a time"),
    ({"webhooks": "none"}, "release.json webhooks: must be a list of objects"),
    ({"notifications": 5}, "release.json notifications: must name a file"),
])
def test_a_release_json_field_of_the_wrong_type_or_size_exits_2_in_one_line(
        release, capsys, change, named):
    summary = json.loads((release / "release.json").read_text())
    (release / "release.json").write_text(json.dumps({**summary, **change}))
    assert _run(release) == 2
    err = capsys.readouterr().err
    assert named in err
    assert err.count("\n") == 1 and len(err) < 400 and "Traceback" not in err
    assert not (release / "report.html").exists()


def test_release_json_nested_too_deeply_or_too_large_exits_2(release, capsys):
    (release / "release.json").write_text("[" * 200_000 + "]" * 200_000)
    assert _run(release) == 2
    assert "release.json: is nested too deeply" in capsys.readouterr().err
    with (release / "release.json").open("w") as big:
        big.write('{"phases": [], "reason": "')
        big.write("x" * (16 * 1024 * 1024))
        big.write('"}')
    assert _run(release) == 2
    assert "release.json: is too large to read" in capsys.readouterr().err


def test_hostile_shapes_inside_a_notebook_result_still_give_a_report(release):
    def hostile(result):
        result["decision"] = {"verdict": "FAIL", "reason": "x", "judgements": [
            {"judge": "a", "values": [1, 2], "thresholds": "none", "evidence": [3],
             "queries": "up"}, "not a judgement", 5]}
        result["metrics"] = [{"timestamp": 1e300, "version": "v2", "metric": "x", "value": 1},
                             {"timestamp": "2024-05-01T12:05:00Z", "version": {"v": 2},
                              "metric": "success-rate", "value": 0.5}]
        result["changes"] = [{"auditHash": ["not", "a", "hash"], "diff": 7}]
        result["weights"] = {"v1": "half", "v2": None}
    edit_result(release / "07-analyze-25.ipynb", hostile)
    page = report.build_report(release).read_text(encoding="utf-8")
    assert "7. analyze-25" in section(page, "judges")
    assert charts_in(page) == 4
