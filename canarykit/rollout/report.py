"""The release report: one self-contained HTML file per release folder.

`build_report(folder)` reads the folder with `canarykit.rollout.release` (the reader and the
charts the post-rollout notebook uses too) and writes `folder/report.html` from the Jinja2
templates in `templates/`. Autoescaping shows every string from the cluster, parameters or
notebooks as text; figures go into <script> elements through `|tojson`, which cannot close them.
Nothing the page shows carries a secret: every value goes through `redact.for_display` (URL
userinfo removed, credential-looking lines withheld), and the only links are relative links to
notebooks read from the release folder. The page is written to a temporary file and renamed
over report.html, which is refused when it is a symbolic link.
The file opens offline with zero network requests: plotly.js is embedded once,
gzip-compressed and base64 encoded, and unpacked in the browser with `DecompressionStream`.
"""

from __future__ import annotations

import argparse
import base64
import functools
import gzip
import importlib.util
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from canarykit import __version__
from canarykit.core import times
from canarykit.core.errors import ExitCode
from canarykit.core.files import write_atomically
from canarykit.rollout import redact
from canarykit.rollout import release as releases

if TYPE_CHECKING:
    import jinja2
    import plotly.graph_objects as go

REPORT_NAME = "report.html"
# Found without importing plotly: `canarykit report build` should start quickly.
PLOTLY_JS = (Path(importlib.util.find_spec("plotly").origin).parent  # type: ignore[union-attr]
             / "package_data" / "plotly.min.js")
STATUS_CLASS = {"promoted": "good", "rolled-back": "bad", "failed": "bad", "aborted": "warn",
                "in-progress": "info"}
VERDICT_CLASS = {"PASS": "good", "FAIL": "bad", "INCONCLUSIVE": "warn"}
LONG_LIST = 4  # longer lists (or lists of objects) show as "N items" in the judge table


# ---------------------------------------------------------------- building


def build_report(folder: Path) -> Path:
    """Write `folder/report.html` from what the release left in `folder`; return its path."""
    release = releases.read_release(folder, need_summary=True)
    target = releases.check_output(release.folder / REPORT_NAME, REPORT_NAME)
    figures = releases.release_figures(releases.release_frames(release), evidence=True)
    page = render(release, figures, releases.audit_check(release))
    write_atomically(target, page, 0o644)  # a reader never opens half a report
    return target


def render(release: releases.Release, figures: dict[str, go.Figure],
           audit: dict[str, Any]) -> str:
    """The whole page as a string."""
    import markupsafe

    changes = [(phase, change) for phase in release.phases
               for change in (phase.result.changes if phase.result else [])
               if isinstance(change, dict)]
    charts = [{"id": f"chart-{name}",
               "figure": redact.for_display_deep(json.loads(figure.to_json()))}
              for name, figure in figures.items()]
    return environment().get_template("report.html.j2").render(
        release=release, folder=release.folder.name, changes=changes, charts=charts,
        audit=audit, version=__version__, plotly=markupsafe.Markup(packed_plotly()),
        built=times.display_minutes(),
    )


@functools.cache
def environment() -> jinja2.Environment:
    """The templates, autoescaped, with the report's filters."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("canarykit.rollout", "templates"),
        autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True,
        lstrip_blocks=True, finalize=shown,
    )
    env.filters.update(clock=clock, took=took, rfc3339=rfc3339, compact=compact,
                       diff_lines=diff_lines, sibling_href=sibling_href)
    env.globals.update(status_class=STATUS_CLASS, verdict_class=VERDICT_CLASS,
                       dry_run_label=releases.DRY_RUN)
    env.policies["json.dumps_kwargs"] = {"separators": (",", ":")}
    return env


def shown(value: Any) -> Any:
    """Every value a template outputs, as the page may show it: None as nothing, text without
    URL userinfo or credential-looking lines. Markup (the macros' output, whose values went
    through here already, JSON from |tojson of redacted figures, the plotly bundle) as is."""
    import markupsafe

    if value is None:
        return ""
    if isinstance(value, markupsafe.Markup) or (
            isinstance(value, int | float) and not isinstance(value, bool)):
        return value
    return redact.for_display(str(value))


@functools.cache
def packed_plotly() -> str:
    """plotly.min.js as base64 of its gzip (about 1.9 MB instead of 4.8 MB)."""
    return base64.b64encode(gzip.compress(PLOTLY_JS.read_bytes(), 9, mtime=0)).decode("ascii")


# ---------------------------------------------------------------- filters: text, never markup


def rfc3339(value: Any) -> str | None:
    """A recorded time as canarykit writes times (for <time datetime>); None if it is none."""
    at = releases.moment(value)
    return times.timestamp(at) if at else None


def clock(value: Any, day: Any = None) -> str:
    """A time in UTC for people; only the time of day when it falls on the same day as `day`."""
    at, first = releases.moment(value), releases.moment(day)
    if not at:
        return "–"
    return times.display(at, time_only=bool(first and first.date() == at.date()))


def took(start: Any, end: Any) -> str:
    """How long from `start` to `end`, e.g. "9m 00s"."""
    first, last = releases.moment(start), releases.moment(end)
    if not first or not last:
        return "–"
    seconds = max(0, round((last - first).total_seconds()))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m {seconds:02d}s"
    return f"{minutes}m {seconds:02d}s" if minutes else f"{seconds}s"


def compact(value: Any, summarise: bool = False) -> str:
    """A number to 4 significant digits, anything else as compact JSON; with `summarise`, a
    long list (or one of objects) as its length."""
    if summarise and isinstance(value, list) and (
            len(value) > LONG_LIST or any(isinstance(item, dict | list) for item in value)):
        return f"{len(value)} items"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict | list):
        return json.dumps(value, default=str, separators=(", ", ": "))
    return "" if value is None else str(value)


def diff_lines(diff: str) -> list[tuple[str, str]]:
    """(css class, line) for each line of a unified diff."""
    def css(line: str) -> str:
        if line.startswith("@@"):
            return "hunk"
        if line.startswith(("---", "+++")):
            return "file"
        return "add" if line.startswith("+") else "del" if line.startswith("-") else ""

    return [(css(line), line) for line in str(diff).splitlines()]


def sibling_href(name: Any) -> str:
    """A relative link to a file next to the report ("./NAME", every character but letters,
    digits and "_.-~" percent-encoded): never a scheme, a host or another folder, so a
    notebook named "javascript:..." stays a file."""
    return "./" + quote(releases.plain_name("notebook", name), safe="")


# ---------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`canarykit report build FOLDER`."""
    commands = parser.add_subparsers(dest="report_command", required=True, metavar="COMMAND")
    build = commands.add_parser("build", help="build the HTML report of a release folder")
    build.add_argument("folder", metavar="FOLDER",
                       help="release folder (reports/SERVICE/RELEASE) holding release.json, or "
                            "its URL in object storage (s3://BUCKET/PREFIX/SERVICE/RELEASE)")


def run(args: argparse.Namespace) -> int:
    """`canarykit report build FOLDER`: OK when written; a FOLDER that is not a release folder
    raises BadInput, which cli.main reports (BAD_INPUT). A release in object storage is
    pulled, and its report stored beside it."""
    from canarykit.storage import records

    if not records.is_url(args.folder):
        print(f"report: {build_report(Path(args.folder))}")
        return ExitCode.OK
    folder = records.fetch(args.folder)
    build_report(folder)
    records.push(folder, args.folder)
    print(f"report: {records.join(args.folder, 'report.html')}")
    return ExitCode.OK
