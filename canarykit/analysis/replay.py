"""`canarykit replay`: the sequential judges over recorded per-interval counts, offline.

Why: to see when a rollout would have been rolled back, and by which judge, under other
settings (alpha, tolerances, dispersion) without a cluster or Prometheus: a past incident
exported with `canarykit.rollout.release.export_replay_csv`, or a simulated stream.

The file is CSV with a header row. Each row holds the counts of one interval (not
cumulative) and is judged as if the analysis checked right after it:
- `stream` (optional): independent streams judged separately (default: one stream);
- `time`: the end of the interval, in seconds or as an ISO 8601 time, increasing per stream;
- `canary_share`: the configured canary share in that interval (weight / 100), in [0, 1);
- `stable_requests`, `stable_errors`, `canary_requests`, `canary_errors`: counts (5xx);
- optional latency histograms, `stable_le_EDGE` and `canary_le_EDGE` for the same EDGEs
  (milliseconds, the last `inf`): requests within EDGE ms, cumulative by edge like
  Prometheus' `le` buckets, so `*_le_inf` is every request with a latency.
Rows with canary_share 0 before the first row with a share are stable's history: not judged,
the last `dispersion_history` of them (as the analysis does) measure the dispersion (the
clustering of stable's errors and latency) unless the config sets one; too few, and the
judges' fallback is used and said. A change of canary_share starts a new segment (the
evidence is chained); rows with canary_share 0 after the rollout started (a rollback, a
pause) are not judged. Reported times are the `time` value for seconds, and seconds after
the first row with a share for ISO times. After the first FAIL decision (the rollback) the
stream's verdict stays FAIL; each judge's first FAIL is still reported.

Judging every row with `judge_sequential` costs milliseconds a row. Instead each judge's
statistic is computed for all rows at once (the same vectorised functions the judges use) to
find the rows where it could FAIL, and the judges themselves run only there and at the last
row; `every_row=True` judges every row (the reference this is tested against).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from canarykit.analysis.settings import (
    AnalysisSettings,
    dispersion_value,
    read_config_file,
    settings_from,
)
from canarykit.core import times
from canarykit.core.errors import BadInput, ExitCode

if TYPE_CHECKING:
    from canarykit.analysis.judges import Decision, Judgement
    from canarykit.analysis.sequential import Dispersion

STREAM, TIME, SHARE = "stream", "time", "canary_share"
COUNTS = ("stable_requests", "stable_errors", "canary_requests", "canary_errors")
REQUIRED = (TIME, SHARE, *COUNTS)
BUCKET_COLUMN = re.compile(r"(stable|canary)_le_(.+)")
DEFAULT_STREAM = "default"
# The settings replay uses; the others of an analysis config are accepted and ignored.
USED_SETTINGS = ("alpha", "error_tolerance", "latency_tolerance", "min_requests",
                 "error_dispersion", "latency_dispersion", "dispersion_history")
# Rows whose statistic is within this of a judge's threshold are judged for real, so float
# rounding between the vectorised screen and the judge can never hide a FAIL.
SCREEN_MARGIN = 1e-6


# ---------------------------------------------------------------- the file


@dataclass
class Row:
    """One interval of one stream, as read (counts may be fractional, from increase())."""

    line: int
    time: float  # seconds; Unix seconds for ISO times
    share: float
    counts: tuple[float, float, float, float]  # in COUNTS order
    stable_buckets: list[float] = field(default_factory=list)  # cumulative by edge
    canary_buckets: list[float] = field(default_factory=list)


@dataclass
class Stream:
    name: str
    rows: list[Row]


@dataclass
class ReplayFile:
    """A checked replay file: its streams in order of first appearance."""

    path: str
    edges: list[float]  # latency bucket edges in ms, the last inf; empty without latency
    iso_times: bool
    streams: list[Stream]


def _where(path: str, line: int, column: str | None = None) -> str:
    return f"{path} row {line}" + (f", column {column}" if column else "")


def _known_columns() -> str:
    return (", ".join((STREAM, *REQUIRED)) + ", and latency buckets stable_le_EDGE and "
            "canary_le_EDGE (EDGE in milliseconds, the last one inf)")


def _edge(text: str) -> float | None:
    if text == "inf":
        return math.inf
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 and text.strip() == text else None


def bucket_column(version: str, edge: float) -> str:
    """The column of a version's requests within `edge` ms: stable_le_0.5, canary_le_inf."""
    if math.isinf(edge):
        return f"{version}_le_inf"
    text = str(int(edge)) if float(edge).is_integer() else repr(float(edge))
    return f"{version}_le_{text}"


def _read_text(path: str) -> str:
    """The file as text; BadInput saying why it cannot be read."""
    where = Path(path)
    if where.is_dir():
        raise BadInput("FILE", path, "is a directory, not a CSV file")
    try:
        data = where.read_bytes()
    except FileNotFoundError:
        raise BadInput("FILE", path, "does not exist") from None
    except OSError as exc:
        raise BadInput("FILE", path, f"cannot be read ({exc.strerror})") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise BadInput(_where(path, line), path,
                       f"is not UTF-8 text (byte 0x{data[exc.start]:02x})") from None
    if not text.strip():
        raise BadInput("FILE", path, "is empty: it needs a header row and data rows")
    return text


def _header(path: str, names: list[str]) -> tuple[dict[str, int], dict[str, list[str]],
                                                 list[float]]:
    """Column positions, each version's bucket columns in edge order, and the edges; BadInput
    naming a bad column."""
    columns: dict[str, int] = {}
    edges: dict[str, dict[float, str]] = {"stable": {}, "canary": {}}
    for index, raw in enumerate(names):
        name = raw.strip()
        if not name:
            raise BadInput(_where(path, 1, f"#{index + 1}"), raw, "has no name")
        if name in columns:
            raise BadInput(_where(path, 1, name), name, "appears twice")
        bucket = BUCKET_COLUMN.fullmatch(name)
        edge = _edge(bucket.group(2)) if bucket else None
        if bucket and edge is not None:
            edges[bucket.group(1)][edge] = name
        elif name not in (STREAM, *REQUIRED):
            raise BadInput(_where(path, 1, name), name,
                           f"is not a replay column (known: {_known_columns()})")
        columns[name] = index
    for name in REQUIRED:
        if name not in columns:
            raise BadInput(_where(path, 1, name), ", ".join(columns),
                           "is missing: the header must name " + ", ".join(REQUIRED))
    stable, canary = edges["stable"], edges["canary"]
    if not stable and not canary:
        return columns, {}, []
    pairs = ((stable, canary, "stable", "canary"), (canary, stable, "canary", "stable"))
    for mine, other, version, peer in pairs:
        if not mine:
            raise BadInput(_where(path, 1, f"{version}_le_*"), sorted(other.values()),
                           f"is missing: latency needs {version}_le_EDGE columns for the "
                           f"same edges as the {peer}_le_EDGE ones")
    for mine, other, version, peer in pairs:
        for edge in sorted(set(mine) - set(other)):
            raise BadInput(_where(path, 1, mine[edge]), mine[edge],
                           f"has no {bucket_column(peer, edge)}: both versions need the same "
                           "bucket edges")
        if math.inf not in mine:
            raise BadInput(_where(path, 1, f"{version}_le_inf"), sorted(mine.values()),
                           "is missing: the last bucket (inf) counts every request")
    order = sorted(stable)
    return columns, {v: [edges[v][edge] for edge in order] for v in edges}, order


def _number(path: str, line: int, column: str, text: str) -> float:
    value = text.strip()
    if not value:
        raise BadInput(_where(path, line, column), text, "is empty")
    try:
        number = float(value)
    except ValueError:
        raise BadInput(_where(path, line, column), text, "is not a number") from None
    if not math.isfinite(number):
        raise BadInput(_where(path, line, column), text, "must be a finite number")
    return number


def _count(path: str, line: int, column: str, text: str) -> float:
    number = _number(path, line, column, text)
    if number < 0:
        raise BadInput(_where(path, line, column), text, "must be a count >= 0")
    return number


def _time(path: str, line: int, text: str, iso: bool | None) -> tuple[float, bool]:
    """Seconds from a number or an ISO 8601 time; all rows must use the same kind."""
    value = text.strip()
    try:
        number = float(value)
    except ValueError:
        number = None
    if number is not None:
        if not math.isfinite(number):
            raise BadInput(_where(path, line, TIME), text, "must be a finite number of seconds")
        if iso:
            raise BadInput(_where(path, line, TIME), text,
                           "is seconds, but the rows before give ISO 8601 times")
        return number, False
    try:
        moment = times.parse_timestamp(value)
    except ValueError:
        raise BadInput(_where(path, line, TIME), text,
                       "must be seconds or an ISO 8601 time such as 2024-05-01T12:00:10Z"
                       ) from None
    if iso is False:
        raise BadInput(_where(path, line, TIME), text,
                       "is an ISO 8601 time, but the rows before give seconds")
    return moment.timestamp(), True


def _share(path: str, line: int, text: str) -> float:
    share = _number(path, line, SHARE, text)
    if share == 1:
        raise BadInput(_where(path, line, SHARE), text,
                       "1 sends all traffic to the canary: nothing to compare it with")
    if not 0 <= share < 1:
        hint = " (weight / 100, not percent)" if 1 < share <= 100 else ""
        raise BadInput(_where(path, line, SHARE), text, f"must be a fraction in [0, 1){hint}")
    return share


def _buckets(path: str, line: int, record: list[str], columns: dict[str, int],
             names: list[str]) -> list[float]:
    """One version's cumulative bucket counts, checked to grow with the edge."""
    values: list[float] = []
    for name in names:
        value = _count(path, line, name, record[columns[name]])
        if values and value < values[-1]:
            raise BadInput(_where(path, line, name), record[columns[name]],
                           f"must be >= the count within the smaller edge ({values[-1]:g}): "
                           "the buckets count the requests within each edge, cumulatively "
                           "like Prometheus' le buckets")
        values.append(value)
    return values


def read_replay_file(path: str | Path) -> ReplayFile:
    """Read and check a replay CSV; one BadInput naming the row and column of the first
    problem (rows are numbered as in the file: the header is row 1)."""
    path = str(path)
    reader = csv.reader(io.StringIO(_read_text(path), newline=""))
    try:
        header = next(reader)
        columns, bucket_columns, edges = _header(path, header)
        streams: dict[str, Stream] = {}
        iso: bool | None = None
        for record in reader:
            line = reader.line_num
            if not record or not any(cell.strip() for cell in record):
                continue  # a blank line
            if len(record) != len(header):
                raise BadInput(_where(path, line), ",".join(record),
                               f"has {len(record)} values, the header names {len(header)} "
                               "columns")
            name = record[columns[STREAM]].strip() if STREAM in columns else DEFAULT_STREAM
            if not name:
                raise BadInput(_where(path, line, STREAM), record[columns[STREAM]], "is empty")
            moment, iso = _time(path, line, record[columns[TIME]], iso)
            stream = streams.setdefault(name, Stream(name, []))
            if stream.rows and moment <= stream.rows[-1].time:
                before = stream.rows[-1]
                raise BadInput(_where(path, line, TIME), record[columns[TIME]],
                               f"must be later than row {before.line} of stream {name} "
                               "(times increase within a stream)")
            counts = tuple(_count(path, line, c, record[columns[c]]) for c in COUNTS)
            for version, (requests, errors) in (("stable", counts[:2]), ("canary", counts[2:])):
                if errors > requests:
                    raise BadInput(_where(path, line, f"{version}_errors"),
                                   record[columns[f"{version}_errors"]],
                                   f"must not exceed {version}_requests ({requests:g})")
            row = Row(line, moment, _share(path, line, record[columns[SHARE]]),
                      counts)  # type: ignore[arg-type]
            if edges:
                row.stable_buckets = _buckets(path, line, record, columns,
                                              bucket_columns["stable"])
                row.canary_buckets = _buckets(path, line, record, columns,
                                              bucket_columns["canary"])
            stream.rows.append(row)
    except StopIteration:
        raise BadInput("FILE", path, "is empty: it needs a header row and data rows") from None
    except csv.Error as exc:
        raise BadInput(_where(path, reader.line_num), path, f"is not valid CSV ({exc})") from None
    if not streams:
        raise BadInput("FILE", path, "has a header but no data rows")
    return ReplayFile(path, edges, bool(iso), list(streams.values()))


# ---------------------------------------------------------------- judging


@dataclass
class StreamReplay:
    """What the judges would have said on one stream."""

    stream: str
    first_fail: dict[str, float | None]  # judge -> time of its first FAIL
    rollback_at: float | None  # time of the first FAIL decision
    verdict: str
    reason: str
    rows: int
    history_rows: int  # rows of stable's history the dispersion was measured on
    judged_rows: int
    segments: int
    dispersion: dict[str, dict[str, Any] | None]
    time_origin: str | None  # ISO times: the time reported as 0

    def to_dict(self) -> dict[str, Any]:
        return {"stream": self.stream, "first_fail": self.first_fail,
                "rollback_at": self.rollback_at, "verdict": self.verdict, "reason": self.reason,
                "rows": self.rows, "history_rows": self.history_rows,
                "judged_rows": self.judged_rows, "segments": self.segments,
                "dispersion": self.dispersion, "time_origin": self.time_origin}


def _dispersions(stream: Stream, history: list[Row], edges: list[float],
                 config: AnalysisSettings) -> tuple[Dispersion, Dispersion | None]:
    """As configured, else measured on the history rows (the fallback when too few)."""
    import numpy as np

    from canarykit.analysis import sequential

    what = f"stream {stream.name}'s {len(history)} history rows (canary_share 0)"
    configured = dispersion_value("error_dispersion", config.error_dispersion)
    if configured is not None:
        error = sequential.configured_dispersion("error", configured)
    else:
        found = (float(sequential.count_dispersion(
            np.array([r.counts[0] for r in history]), np.array([r.counts[1] for r in history])))
            if history else None)
        error = sequential.estimate_dispersion("error", found, history=what)
    if not edges:
        return error, None
    configured = dispersion_value("latency_dispersion", config.latency_dispersion)
    if configured is not None:
        return error, sequential.configured_dispersion("latency", configured)
    found = None
    if history:
        cumulative = np.array([r.stable_buckets for r in history])
        per_bucket = np.diff(cumulative, axis=1, prepend=0.0)
        found = float(sequential.latency_dispersion(per_bucket))
    return error, sequential.estimate_dispersion("latency", found, history=what)


def replay_stream(stream: Stream, edges: list[float], config: AnalysisSettings, *,
                  iso_times: bool = False, every_row: bool = False) -> StreamReplay:
    """Judge `stream` as if the analysis checked after every row: each judge's first FAIL,
    the first FAIL decision (the rollback) and the verdict at the end (FAIL from a rollback
    on: the first FAIL wins)."""
    import numpy as np

    from canarykit.analysis import judges, sequential

    rows = stream.rows
    start = next((i for i, row in enumerate(rows) if row.share > 0), None)
    history = rows if start is None else rows[:start]
    if start is not None:  # as the analysis does: the dispersion_history before the rollout
        history = [r for r in history
                   if r.time >= rows[start].time - config.dispersion_history_seconds]
    error_spread, latency_spread = _dispersions(stream, history, edges, config)
    judged = [] if start is None else [i for i in range(start, len(rows)) if rows[i].share > 0]
    origin = rows[start].time if start is not None and iso_times else 0.0
    latency = bool(edges)

    # Segments: runs of judged rows with one share and no unjudged row between them.
    segment_of = np.zeros(len(judged), dtype=int)
    for k in range(1, len(judged)):
        same = (rows[judged[k]].share == rows[judged[k - 1]].share
                and judged[k] == judged[k - 1] + 1)
        segment_of[k] = segment_of[k - 1] + (0 if same else 1)
    counts = np.array([rows[i].counts for i in judged], dtype=float).reshape(-1, 4)
    cumulative = np.zeros_like(counts)  # cumulative within each segment
    bounds = [(int(np.searchsorted(segment_of, s)), int(np.searchsorted(segment_of, s, "right")))
              for s in range(int(segment_of[-1]) + 1 if judged else 0)]
    for a, b in bounds:
        cumulative[a:b] = np.cumsum(counts[a:b], axis=0)
    stable_b = np.cumsum(np.array([rows[i].stable_buckets for i in judged], dtype=float)
                         .reshape(len(judged), len(edges)), axis=0)
    canary_b = np.cumsum(np.array([rows[i].canary_buckets for i in judged], dtype=float)
                         .reshape(len(judged), len(edges)), axis=0)

    settings = {"alpha": config.alpha, "error_tolerance": config.error_tolerance,
                "latency_tolerance": config.latency_tolerance,
                "min_requests": config.min_requests, "judge_latency": latency,
                "error_dispersion": error_spread, "latency_dispersion": latency_spread or 1.0}
    found: dict[int, tuple[list[Judgement], Decision]] = {}

    def judge_at(k: int) -> tuple[list[Judgement], Decision]:
        """The judges after judged row k (k = -1: before any row)."""
        if k not in found:
            segments = []
            for a, b in bounds:
                if a > k:
                    break
                last = min(b, k + 1) - 1
                segments.append(sequential.Segment(rows[judged[a]].share,
                                                   *cumulative[last].tolist(),
                                                   started_at=rows[judged[a]].time))
            buckets = (None, None)
            if latency and k >= 0:
                buckets = (list(zip(edges, stable_b[k].tolist(), strict=True)),
                           list(zip(edges, canary_b[k].tolist(), strict=True)))
            made = sequential.judge_sequential(segments, *buckets, **settings)
            found[k] = (made, judges.decide(made))
        return found[k]

    final_judgements, final = judge_at(len(judged) - 1)
    names = [j.judge for j in final_judgements]
    if every_row:
        possible = {name: np.ones(len(judged), dtype=bool) for name in names}
    else:
        possible = _screen(rows, judged, bounds, cumulative, stable_b, canary_b, edges,
                           config, error_spread.value,
                           latency_spread.value if latency_spread else 1.0)

    def fails(k: int, name: str) -> bool:
        return any(j.judge == name and j.verdict == judges.Verdict.FAIL for j in judge_at(k)[0])

    def when(k: int) -> float:
        return round(rows[judged[k]].time - origin, 6)

    first_fail: dict[str, float | None] = {}
    for name in names:
        candidates = possible.get(name, np.ones(len(judged), dtype=bool))
        hit = next((k for k in np.flatnonzero(candidates) if fails(int(k), name)), None)
        first_fail[name] = None if hit is None else when(int(hit))
    critical = [j.judge for j in final_judgements if j.critical]
    union = np.zeros(len(judged), dtype=bool)
    for name in critical:
        union |= possible.get(name, np.ones(len(judged), dtype=bool))
    rollback = next((int(k) for k in np.flatnonzero(union)
                     if judge_at(int(k))[1].verdict == judges.Verdict.FAIL), None)
    decision = final if rollback is None else judge_at(rollback)[1]
    reason = decision.reason if judged else "no row with canary_share > 0: nothing to judge"
    return StreamReplay(
        stream=stream.name, first_fail=first_fail,
        rollback_at=None if rollback is None else when(rollback),
        verdict=decision.verdict.value, reason=reason, rows=len(rows),
        history_rows=len(history), judged_rows=len(judged), segments=len(bounds),
        dispersion={"error": error_spread.to_dict(),
                    "latency": latency_spread.to_dict() if latency_spread else None},
        time_origin=times.timestamp(origin) if iso_times and start is not None else None)


def _screen(rows: list[Row], judged: list[int], bounds: list[tuple[int, int]], cumulative: Any,
            stable_b: Any, canary_b: Any, edges: list[float], config: AnalysisSettings,
            error_phi: float, latency_phi: float) -> dict[str, Any]:
    """judge -> the judged rows where it may FAIL: its statistic, computed for every row at
    once as `judge_sequential` computes it for one, within SCREEN_MARGIN of its threshold."""
    import numpy as np

    from canarykit.analysis import sequential

    alpha = config.alpha / (3 if edges else 2)
    threshold = math.log(1.0 / alpha) - SCREEN_MARGIN
    rounded = np.rint(cumulative)  # the judges count whole requests
    error = np.zeros(len(judged))
    split = np.zeros(len(judged))
    error_before = split_before = 0.0
    for a, b in bounds:  # evidence chained across segments
        share = rows[judged[a]].share
        s_req, s_err, c_req, c_err = rounded[a:b].T
        here = sequential.error_log_bayes_factor(c_err / error_phi, s_err / error_phi, share,
                                                 tolerance=config.error_tolerance)
        error[a:b] = error_before + here
        error_before += float(here[-1])
        here = sequential.retry_adjusted_split_log_bayes_factor(c_req, s_req, c_err, s_err,
                                                                share)
        split[a:b] = split_before + here
        split_before += float(here[-1])
    possible = {"error-rate-sequential": error >= threshold, "traffic-split": split >= threshold}
    if edges:
        finite = len(edges) - 1
        n_s, n_c = stable_b[:, -1], canary_b[:, -1]
        slower = np.zeros(len(judged), dtype=bool)
        if finite:
            with np.errstate(divide="ignore", invalid="ignore"):
                gap = stable_b[:, :-1] / n_s[:, None] - canary_b[:, :-1] / n_c[:, None]
            width = (sequential.cdf_band_halfwidth(n_s / latency_phi, alpha / 2, edges=finite)
                     + sequential.cdf_band_halfwidth(n_c / latency_phi, alpha / 2,
                                                     edges=finite))
            low = np.nan_to_num(gap - width[:, None], nan=-math.inf).max(axis=1)
            slower = (n_s > 0) & (n_c > 0) & (low > config.latency_tolerance - SCREEN_MARGIN)
        possible["latency-sequential"] = slower
    return possible


def replay(path: str | Path, config: AnalysisSettings | None = None, *,
           every_row: bool = False) -> list[StreamReplay]:
    """Every stream of a replay file, judged (BadInput for a bad file)."""
    config = (config or AnalysisSettings()).validate()
    found = read_replay_file(path)
    return [replay_stream(stream, found.edges, config, iso_times=found.iso_times,
                          every_row=every_row) for stream in found.streams]


# ---------------------------------------------------------------- the CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `canarykit replay`."""
    parser.description = (
        "Run the sequential judges over recorded per-interval counts, as if checking after "
        "every row, and print for each stream when each judge would first have failed, when "
        "the analysis would have rolled back, and the final verdict. Exit 0 when every stream "
        "passes, 1 when any fails, 3 otherwise, 2 for a bad file.")
    parser.epilog = (
        f"Columns: {_known_columns()}. Rows with canary_share 0 before the first row with a "
        "share are stable's history (the dispersion is measured on them); a change of "
        "canary_share starts a new segment. Times: the time value for seconds, seconds after "
        "the first row with a share for ISO 8601 times.")
    parser.add_argument("file", metavar="FILE", help="the CSV file of per-interval counts")
    parser.add_argument("--config", metavar="FILE",
                        help="YAML analysis settings (as for canarykit analyze, or a plan's "
                             "analysis section); replay uses " + ", ".join(USED_SETTINGS)
                             + " and ignores the rest")
    parser.add_argument("--output", choices=("text", "json"), default="text")


def read_config(path: str | None) -> AnalysisSettings:
    """The analysis settings of a YAML file (the defaults without one)."""
    if not path:
        return AnalysisSettings()
    return settings_from(read_config_file(path))


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:g}s"


def format_text(results: list[StreamReplay]) -> str:
    """One block per stream: rows, dispersions, each judge's first FAIL, the verdict."""
    blocks = []
    for found in results:
        origin = (f"; times in seconds after {found.time_origin}" if found.time_origin
                  else "")
        lines = [f"stream {found.stream}: {found.rows} rows, {found.judged_rows} judged in "
                 f"{found.segments} segment(s), {found.history_rows} of stable's history"
                 f"{origin}"]
        for spread in found.dispersion.values():
            if spread is not None:
                lines.append(f"  {spread['note']} ({spread['source']})")
        width = max((len(name) for name in found.first_fail), default=0)
        for name, at in found.first_fail.items():
            said = "never fails" if at is None else f"first fails at {_seconds(at)}"
            lines.append(f"  {name:<{width}}  {said}")
        lines.append("  rollback at " + (_seconds(found.rollback_at)
                                         if found.rollback_at is not None else "- (never)"))
        lines.append(f"  verdict {found.verdict} \u2014 {found.reason}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def exit_code(results: list[StreamReplay]) -> ExitCode:
    """1 when a stream FAILs, 0 when every stream PASSes, else 3 (INCONCLUSIVE)."""
    verdicts = {found.verdict for found in results}
    if "FAIL" in verdicts:
        return ExitCode.FAILED
    return ExitCode.OK if verdicts == {"PASS"} else ExitCode.INCONCLUSIVE


def run(args: argparse.Namespace) -> int:
    """`canarykit replay`: 0 PASS, 1 FAIL, 3 INCONCLUSIVE, 2 bad input."""
    results = replay(args.file, read_config(args.config))
    if args.output == "json":
        print(json.dumps({"streams": [found.to_dict() for found in results]}, indent=2))
    else:
        print(format_text(results))
    return exit_code(results)
