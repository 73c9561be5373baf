"""Append-only audit log of every change canarykit makes, with a hash chain that the cluster
anchors.

Each record is one JSON line. `hash` is the SHA-256 of the record's canonical JSON (sorted
keys, no `hash` field) and `prev` the previous record's hash, so editing, removing or
reordering a record breaks the chain from that record on.

A change is recorded in two records, so the record and the change cannot part:
- an `intent`, appended *before* anything is sent: its hash travels with the change as the
  object's `canarykit.io/audit-head` annotation;
- an `outcome` (`applied`, `failed`, `conflict`; `unknown` when a write got no answer),
  appended afterwards.
An intent without a final outcome is an unfinished change (its process died, or it is still
in flight): the next writer asks the cluster whether the object carries that head and records
the answer (an outcome `applied` or `not-applied` with `reconciled`), and `verify_chain`
reports it.

The anchors a rewrite of the log cannot forge:
- each managed object's audit head in the cluster must name a record of the log, and that
  object's newest applied change (checked when `verify_chain` is given the cluster's heads);
- with `CANARYKIT_AUDIT_HMAC_KEY` set, every record also carries `mac`, an HMAC-SHA256 of
  the record under that key, which nobody without the key can recompute.

A line that is not a whole record at the end of the log (an append cut short) is reported;
the next writer keeps it, appends a `note` naming its bytes (offset, length, SHA-256), and
continues the chain from the last whole record. Old logs (one record per change, written
after it, no `type`) verify as before.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import os
import re
import stat
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from canarykit.core import times
from canarykit.core.errors import BadInput, CanaryKitError
from canarykit.core.urls import without_userinfo

GENESIS = "0" * 64
DEFAULT_AUDIT_LOG = "reports/audit.jsonl"
HMAC_KEY_ENV = "CANARYKIT_AUDIT_HMAC_KEY"
MIN_KEY_BYTES = 16
MAX_LINE_BYTES = 16 * 1024 * 1024  # a record longer than this is not one canarykit wrote
MAX_SKIPPED_BYTES = MAX_LINE_BYTES + 1024 * 1024  # what a writer skips at the end, at most
LOCK_WAIT_SECONDS = 30.0
SHOWN = 12  # characters of a hash a message shows

# Record types (a record without `type` is an old-style change or an event, such as approval).
INTENT, OUTCOME, NOTE = "intent", "outcome", "note"
SKIPPED = "skipped"  # the one kind of note: bytes at the end that were not a whole record
# Outcomes. UNKNOWN: the request was sent and no answer came (a timeout): not final.
APPLIED, FAILED, CONFLICT, NOT_APPLIED, UNKNOWN = (
    "applied", "failed", "conflict", "not-applied", "unknown")
RESULTS = (APPLIED, FAILED, CONFLICT, NOT_APPLIED, UNKNOWN)
NOT_APPLIED_RESULTS = (FAILED, CONFLICT, NOT_APPLIED)
# Verdicts, from good to bad; `ok` only for INTACT.
INTACT, INCOMPLETE, BROKEN, UNREADABLE = "intact", "incomplete", "broken", "unreadable"

_HEX64 = re.compile(r"[0-9a-f]{64}")
# The objects whose audit head anchors the log: the traffic objects canarykit changes.
_MANAGED = re.compile(r"(VirtualService|DestinationRule|HTTPRoute|GRPCRoute) "
                      r"([a-z0-9][-a-z0-9]{0,62})/([a-z0-9][-a-z0-9.]{0,252})")


# --- where, and with which key --------------------------------------------------------------


def default_audit_log() -> Path:
    """The log named by CANARYKIT_AUDIT_LOG, else reports/audit.jsonl under the current folder."""
    return Path(os.environ.get("CANARYKIT_AUDIT_LOG") or DEFAULT_AUDIT_LOG)


def hmac_key(environ: dict[str, str] | None = None) -> bytes | None:
    """The HMAC key from CANARYKIT_AUDIT_HMAC_KEY, or None when it is unset or empty.

    A key only its holders know is what makes a rewrite of the whole chain detectable
    without the cluster; it is never shown, only its length.
    """
    value = (os.environ if environ is None else environ).get(HMAC_KEY_ENV) or ""
    if not value:
        return None
    key = value.encode("utf-8", "surrogateescape")
    if len(key) < MIN_KEY_BYTES:
        raise BadInput(HMAC_KEY_ENV, f"{len(key)} bytes",
                       f"is too short for an HMAC key: use at least {MIN_KEY_BYTES} random "
                       "bytes (e.g. `openssl rand -hex 32`)")
    return key


def managed_target(target: Any) -> tuple[str, str, str] | None:
    """(kind, namespace, name) of a record's target when it is an object canarykit manages."""
    if not isinstance(target, str):
        return None
    found = _MANAGED.fullmatch(target)
    return (found.group(1), found.group(2), found.group(3)) if found else None


# --- hashing --------------------------------------------------------------------------------


def _canonical(record: dict[str, Any], *without: str) -> bytes:
    body = {k: v for k, v in record.items() if k not in without}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return text.encode("utf-8", "surrogatepass")  # total, even on a hostile record


def record_hash(record: dict[str, Any]) -> str:
    """SHA-256 of the record's canonical JSON without `hash` (so it covers `mac` and `prev`)."""
    return hashlib.sha256(_canonical(record, "hash")).hexdigest()


def record_mac(record: dict[str, Any], key: bytes) -> str:
    """HMAC-SHA256 under `key` of the record's canonical JSON without `hash` and `mac`."""
    return hmac.new(key, _canonical(record, "hash", "mac"), hashlib.sha256).hexdigest()


def _seal(record: dict[str, Any], key: bytes | None) -> dict[str, Any]:
    if key is not None:
        record["mac"] = record_mac(record, key)
    record["hash"] = record_hash(record)
    return record


def _is_whole(record: Any) -> bool:
    """Whether a parsed line has what chaining needs: it may still be edited or misplaced."""
    return (isinstance(record, dict) and isinstance(record.get("hash"), str)
            and _HEX64.fullmatch(record["hash"]) is not None
            and type(record.get("seq")) is int and record["seq"] >= 1)


def _parse(raw: bytes) -> tuple[dict[str, Any] | None, str]:
    """(record, "") for a whole record, else (None, why the line is not one)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None, "is not UTF-8 text"
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: nesting; ValueError: huge ints too
        return None, "is not JSON"
    if not isinstance(value, dict):
        return None, "is not a JSON object"
    if not _is_whole(value):
        return None, "has no hash or sequence number"
    return value, ""


# --- reading --------------------------------------------------------------------------------


@dataclass
class Line:
    """One non-blank line of the log: where it is and what it holds."""

    number: int  # 1-based, counting every line of the file
    offset: int  # byte offset of its first byte
    length: int  # bytes, without the newline
    terminated: bool  # ends with a newline
    record: dict[str, Any] | None
    problem: str = ""  # why it is not a whole record
    looks_like_record: bool = False  # starts as a record does: a cut-short append may


def _open_regular(path: Path, flags: int, field_name: str, mode: int = 0o666) -> int:
    """A descriptor on `path`, refusing anything but a regular file (a FIFO, /dev/zero or a
    folder would hang or never end); O_NONBLOCK keeps the open itself from blocking."""
    try:
        fd = os.open(path, flags | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0), mode)
    except IsADirectoryError:
        raise BadInput(field_name, str(path), "is a folder, not an audit log") from None
    except OSError as exc:
        raise BadInput(field_name, str(path),
                       f"cannot open the audit log ({exc.strerror})") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise BadInput(field_name, str(path), "is not a regular file")
    os.set_blocking(fd, True)
    return fd


def _lines(handle) -> Iterator[Line]:
    """Every non-blank line, bounded: a line longer than MAX_LINE_BYTES is read past in
    chunks and reported, never held whole."""
    number, offset = 0, 0
    while True:
        chunk = handle.readline(MAX_LINE_BYTES + 1)
        if not chunk:
            return
        number += 1
        start, length = offset, len(chunk)
        if len(chunk) > MAX_LINE_BYTES and not chunk.endswith(b"\n"):
            while chunk and not chunk.endswith(b"\n"):
                chunk = handle.readline(1024 * 1024)
                length += len(chunk)
            offset += length
            terminated = length > 0 and chunk.endswith(b"\n")
            yield Line(number, start, length - terminated, terminated, None,
                       f"is longer than {MAX_LINE_BYTES:,} bytes")
            continue
        offset += length
        terminated = chunk.endswith(b"\n")
        raw = chunk[:-1] if terminated else chunk
        if not raw.strip():
            continue
        record, problem = _parse(raw)
        yield Line(number, start, len(raw), terminated, record, problem,
                   raw.lstrip().startswith(b'{"'))


@contextmanager
def _reading(path: Path | str) -> Iterator[Any]:
    fd = _open_regular(Path(path), os.O_RDONLY, "audit log")
    with os.fdopen(fd, "rb") as handle:
        yield handle


def _first_unreadable(lines: list[Line]) -> Line | None:
    """The first line that is not a record and is not where a torn append ends the log."""
    last_whole = max((i for i, line in enumerate(lines) if line.record is not None), default=-1)
    if last_whole < 0 and lines and not lines[0].looks_like_record:
        return lines[0]  # no record at all: not a log whose first append was cut short
    bad = [line for line in lines[:last_whole] if line.record is None]
    skipped = _skipped_numbers(lines)
    return next((line for line in bad if line.number not in skipped), None)


def _skipped_numbers(lines: list[Line]) -> set[int]:
    """Numbers of the non-record lines a `skipped` note right after them accounts for."""
    numbers: set[int] = set()
    run: list[Line] = []
    for line in lines:
        if line.record is None:
            run.append(line)
            continue
        if run and line.record.get("type") == NOTE:
            numbers.update(item.number for item in run)
        run = []
    return numbers


def read_records(path: Path | str) -> list[dict[str, Any]]:
    """The log's changes and events as its readers need them (analysis, the report):
    old-style records and events as they are, each change as its intent record (whose hash
    is the object's audit head) unless its outcome says it was not applied; outcomes, notes
    and a torn last line are left out. BadInput for a file that is not an audit log."""
    with _reading(path) as handle:
        lines = list(_lines(handle))
    bad = _first_unreadable(lines)
    if bad is not None:
        raise BadInput("audit log", str(path), f"is not an audit log: line {bad.number} "
                       f"{bad.problem}")
    records = [line.record for line in lines if line.record is not None]
    final = _final_outcomes(records)
    return [r for r in records if r.get("type") in (None, INTENT)
            and final.get(str(r.get("hash")), {}).get("result") not in NOT_APPLIED_RESULTS]


def _final_outcomes(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """intent hash -> its final outcome record (the last one that is not `unknown`, else the
    last `unknown`)."""
    final: dict[str, dict[str, Any]] = {}
    for record in records:
        if record.get("type") != OUTCOME or not isinstance(record.get("intent"), str):
            continue
        known = final.get(record["intent"])
        if record.get("result") != UNKNOWN or known is None or known.get("result") == UNKNOWN:
            final[record["intent"]] = record
    return final


# --- writing --------------------------------------------------------------------------------


@dataclass
class _Tail:
    hash: str
    seq: int
    junk_offset: int  # where bytes that are not a whole record start (== size: none)
    size: int
    ends_with_newline: bool


def _previous_line(fd: int, end: int) -> tuple[int, bytes] | None:
    """(start, bytes) of the line ending at byte `end` (exclusive), read backwards; None
    when it is longer than MAX_LINE_BYTES."""
    start, data = end, b""
    while start > 0:
        step = min(64 * 1024, start)
        block = os.pread(fd, step, start - step)
        cut = block.rfind(b"\n")
        if cut >= 0:
            return start - step + cut + 1, block[cut + 1:] + data
        start -= step
        data = block + data
        if len(data) > MAX_LINE_BYTES:
            return None
    return 0, data


def _read_tail(fd: int, path: Path) -> _Tail:
    """The newest whole record and what follows it, read from the end: the log only grows."""
    size = os.fstat(fd).st_size
    ends_with_newline = size == 0 or os.pread(fd, 1, size - 1) == b"\n"
    end = size - 1 if size and ends_with_newline else size  # the last line's end, no newline
    while end > 0 and size - end <= MAX_SKIPPED_BYTES:
        found = _previous_line(fd, end)
        if found is None:
            break
        start, raw = found
        record = _parse(raw)[0] if raw.strip() else None
        if record is not None:
            return _Tail(record["hash"], record["seq"], min(end + 1, size), size,
                         ends_with_newline)
        end = start - 1
    if end <= 0:
        head = os.pread(fd, 64, 0).lstrip()
        if not head or head.startswith(b'{"'):  # empty, or the very first append cut short
            return _Tail(GENESIS, 0, 0, size, ends_with_newline)
        raise BadInput("audit log", str(path),
                       "is not an audit log: it holds no whole record; not writing to it")
    raise BadInput("audit log", str(path),
                   f"ends with more than {MAX_SKIPPED_BYTES:,} bytes that are not whole records "
                   "(not a cut-short append); look at it before writing more")


def _skipped_bytes(region: bytes) -> bytes:
    """The bytes a `skipped` note covers: up to the end of the last non-blank line."""
    lines = region.split(b"\n")
    while lines and not lines[-1].strip():
        lines.pop()
    return b"\n".join(lines)


class AuditLog:
    """An exclusive, locked hold on the log while records are appended.

    Holders never make a network call: append the intent, let go, change the object, take
    the log again for the outcome. `prepare` computes the next record (sequence number, link,
    MAC, hash); `write` appends it. A half-written tail is recovered by `prepare`.
    """

    def __init__(self, fd: int, path: Path, key: bytes | None) -> None:
        self._fd, self.path, self._key = fd, path, key

    def prepare(self, entry: dict[str, Any]) -> dict[str, Any]:
        tail = _read_tail(self._fd, self.path)
        region = os.pread(self._fd, tail.size - tail.junk_offset, tail.junk_offset)
        if region.strip():
            tail = self._skip_torn_tail(tail, _skipped_bytes(region))
        elif not tail.ends_with_newline:
            self._append(b"\n")  # a whole last record that lost its newline
        record = {
            "seq": tail.seq + 1,
            "time": entry.get("time") or times.timestamp(timespec="milliseconds"),
            **{k: v for k, v in entry.items() if k not in ("time", "seq", "prev", "hash", "mac")},
            "prev": tail.hash,
        }
        return _seal(record, self._key)

    def write(self, record: dict[str, Any]) -> None:
        self._append(json.dumps(record, sort_keys=True, ensure_ascii=False).encode() + b"\n")

    def append(self, entry: dict[str, Any]) -> dict[str, Any]:
        record = self.prepare(entry)
        self.write(record)
        return record

    def _skip_torn_tail(self, tail: _Tail, skipped: bytes) -> _Tail:
        """Keep the bytes that are not a whole record, and say so in the chain."""
        if not tail.ends_with_newline:
            self._append(b"\n")
        note = {
            "seq": tail.seq + 1,
            "time": times.timestamp(timespec="milliseconds"),
            "type": NOTE,
            "note": SKIPPED,
            "offset": tail.junk_offset,
            "length": len(skipped),
            "sha256": hashlib.sha256(skipped).hexdigest(),
            "reason": "the log ended with bytes that are not a whole record (an append cut "
                      "short?); kept, skipped, the chain continues from the record before",
            "prev": tail.hash,
        }
        self.write(_seal(note, self._key))
        return _Tail(note["hash"], note["seq"], 0, 0, True)

    def _append(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view):]
        os.fsync(self._fd)

    def records(self) -> list[dict[str, Any]]:
        """Every whole record (for a holder deciding what to append)."""
        with os.fdopen(os.dup(self._fd), "rb") as handle:
            handle.seek(0)
            return [line.record for line in _lines(handle) if line.record is not None]


@contextmanager
def locked_log(path: Path | str, *, wait: float = LOCK_WAIT_SECONDS) -> Iterator[AuditLog]:
    """The log, created if missing, held exclusively; gives up after `wait` seconds (a
    holder never waits on the network, so a longer wait means a stuck process)."""
    path = Path(path)
    key = hmac_key()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BadInput("audit log", str(path),
                       f"cannot create its folder ({exc.strerror})") from None
    fd = _open_regular(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, "audit log")
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise CanaryKitError(
                        f"audit log {path}: another process has held its lock for more than "
                        f"{wait:g} s; nothing was changed") from None
                time.sleep(0.02)
        try:
            yield AuditLog(fd, path, key)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


# --- unfinished changes ---------------------------------------------------------------------


@dataclass(frozen=True)
class Unfinished:
    """An intent without a final outcome: in flight, or its process died."""

    hash: str
    target: str
    deadline: str  # after it, its writer has given up
    server: str


def unfinished(records: list[dict[str, Any]], server: str | None = None) -> list[Unfinished]:
    """The intents (on `server`, when given) that have no final outcome yet."""
    final = _final_outcomes(records)
    found = []
    for record in records:
        if record.get("type") != INTENT or managed_target(record.get("target")) is None:
            continue
        if final.get(record["hash"], {}).get("result", UNKNOWN) != UNKNOWN:
            continue
        if server is not None and _server(record) != without_userinfo(server):
            continue
        found.append(Unfinished(record["hash"], record["target"],
                                str(record.get("deadline") or ""), _server(record)))
    return found


def _server(record: dict[str, Any]) -> str:
    return without_userinfo(record.get("server") or "")


def _expired(deadline: str, now: datetime) -> bool:
    try:
        return times.parse_timestamp(deadline) < now
    except (ValueError, TypeError, OverflowError):
        return True  # no usable deadline: nobody is still waiting on it


def _applied_chain(records_by_hash: dict[str, dict[str, Any]], head: str, target: str) -> set[str]:
    """The changes an object carrying `head` has been through, as far as the log knows:
    `head`, the change it was made on (`baseAuditHead`), and so on back."""
    chain: set[str] = set()
    while head in records_by_hash and head not in chain:
        record = records_by_hash[head]
        if record.get("target") != target:
            break
        chain.add(head)
        head = str(record.get("baseAuditHead") or "")
    return chain


def settle(log: AuditLog, heads: dict[str, str | None], *, actor: str, server: str,
           now: datetime | None = None) -> list[dict[str, Any]]:
    """Append the outcome of every unfinished change the cluster answers for.

    `heads` maps a target to the audit head its object carries now (None: no head or no
    object). Applied: the object carries the intent's head, or a later change made on it.
    Not applied: neither, and the intent's deadline has passed. Otherwise it may still be in
    flight and is left alone. Call with the cluster's answers gathered *before* taking the
    log (no network call under the lock); the log is read again here, so two writers
    settling the same change record it once.
    """
    now = now or times.utc_now()
    records = log.records()
    by_hash = {str(r.get("hash")): r for r in records}
    written = []
    for item in unfinished(records, server):
        if item.target not in heads:
            continue
        head = heads[item.target]
        if head is not None and item.hash in _applied_chain(by_hash, head, item.target):
            result, evidence = APPLIED, "the object carries this change's audit head" if (
                head == item.hash) else f"the object carries a later change ({head[:SHOWN]}…)"
        elif _expired(item.deadline, now):
            result, evidence = NOT_APPLIED, "the object does not carry this change's audit " \
                "head and the change's deadline has passed"
        else:
            continue
        written.append(log.append({
            "type": OUTCOME, "intent": item.hash, "target": item.target, "result": result,
            "reconciled": True, "actor": actor, "server": without_userinfo(server),
            "evidence": evidence}))
    return written


def deadline_after(seconds: float) -> str:
    """The time by which a change started now has been given up on by its writer."""
    return times.timestamp(times.utc_now() + timedelta(seconds=seconds), timespec="milliseconds")


# --- verifying ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ObjectHead:
    """What the cluster says of one managed object: whether it exists, and its audit head."""

    target: str
    found: bool
    head: str | None = None


@dataclass
class ChainCheck:
    ok: bool
    records: int
    problem: str = ""
    head: str = GENESIS
    status: str = INTACT
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    checked: int = 0  # managed objects checked against the cluster
    server: str = ""  # the cluster checked against ("" when not)
    changes: int = 0  # of the records, the changes to managed objects

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "records": self.records, "changes": self.changes,
                "problem": self.problem, "head": self.head, "status": self.status,
                "problems": self.problems, "notes": self.notes, "checkedObjects": self.checked,
                "server": self.server}


class _Verdict:
    """Collects problems (the first decides the status) and notes while a log is checked."""

    def __init__(self) -> None:
        self.status, self.problems, self.notes = INTACT, [], []

    def add(self, status: str, problem: str) -> None:
        order = (INTACT, INCOMPLETE, BROKEN, UNREADABLE)
        if order.index(status) > order.index(self.status):
            self.status = status
            self.problems.insert(0, problem)  # the worst first
        else:
            self.problems.append(problem)

    def check(self, records: list[dict[str, Any]], head: str, checked: int = 0,
              server: str = "") -> ChainCheck:
        changes = sum(1 for r in records if r.get("type") in (None, INTENT)
                      and managed_target(r.get("target")))
        return ChainCheck(self.status == INTACT, len(records), self.problems[0] if self.problems
                          else "", head, self.status, self.problems, self.notes, checked, server,
                          changes)


def verify_chain(
    path: Path | str,
    expected_heads: set[str] | None = None,
    *,
    key: bytes | None = None,
    cluster_heads: Callable[[list[str]], list[ObjectHead]] | None = None,
    server: str = "",
    now: datetime | None = None,
) -> ChainCheck:
    """Check every record's hash, link and (with `key`) MAC; every unfinished change; and
    optionally that the log holds `expected_heads` (the audit hashes a release's changes
    carry) and agrees with the cluster.

    `cluster_heads(targets)` reads the managed objects the log's records on `server` target;
    each object's audit head must be a record of the log, that object's newest applied
    change: so records cut off the end, or a chain rewritten with recomputed hashes, are
    found. A file that is not an audit log at all is UNREADABLE, never a traceback.
    """
    path = Path(path)
    now = now or times.utc_now()
    if not path.exists():
        return ChainCheck(False, 0, f"audit log {path} does not exist", status=BROKEN,
                          problems=[f"audit log {path} does not exist"])
    verdict = _Verdict()
    numbers: dict[str, int] = {}  # record hash -> its line
    try:
        with _reading(path) as handle:
            lines = list(_lines(handle))
            records, head = _check_lines(handle, lines, key, verdict, numbers)
    except BadInput as exc:
        verdict.add(UNREADABLE, f"{exc.problem}")
        return verdict.check([], GENESIS)
    if verdict.status in (BROKEN, UNREADABLE):
        return verdict.check(records, head)
    seen = {str(r["hash"]) for r in records}
    missing = sorted((expected_heads or set()) - seen)
    if missing:
        verdict.add(BROKEN, f"a change of this release names audit head {missing[0][:SHOWN]}… "
                    "which is not in the log: records were removed from the end")
    checked = 0
    if cluster_heads is None:
        for item in unfinished(records):
            verdict.add(INCOMPLETE, f"line {numbers[item.hash]}: the change to {item.target} "
                        "has no outcome (still in flight, or its process died): check the log "
                        "against the cluster")
    else:
        checked = _check_against_cluster(records, numbers, cluster_heads, server, now,
                                         verdict)
    return verdict.check(records, head, checked, without_userinfo(server) if
                         cluster_heads else "")


def _check_lines(handle, lines: list[Line], key: bytes | None, verdict: _Verdict,
                 numbers: dict[str, int]) -> tuple[list[dict[str, Any]], str]:
    """The chain itself: links, sequence numbers, hashes, MACs, record types, skipped tails."""
    prev, records, run = GENESIS, [], []
    intents: dict[str, str] = {}  # hash -> target
    first_mac: int | None = None
    after_record = 0  # byte offset after the last whole record's line
    for line in lines:
        if line.record is None:
            run.append(line)
            continue
        record, number = line.record, line.number
        if run and record.get("type") != NOTE:
            bad = run[0]
            verdict.add(UNREADABLE, f"line {bad.number} {bad.problem}: not an audit record")
            return records, prev
        expected_seq = len(records) + 1
        if record.get("prev") != prev:
            verdict.add(BROKEN, f"line {number}: link to the previous record is broken")
            return records, prev
        if record.get("seq") != expected_seq:
            verdict.add(BROKEN, f"line {number}: sequence number is not {expected_seq}")
            return records, prev
        try:
            intact = record_hash(record) == record["hash"]
        except (ValueError, RecursionError, TypeError):
            intact = False
        if not intact:
            verdict.add(BROKEN, f"line {number}: record was edited")
            return records, prev
        if key is not None:
            if "mac" in record:
                if not (isinstance(record["mac"], str)
                        and hmac.compare_digest(record["mac"], record_mac(record, key))):
                    verdict.add(BROKEN, f"line {number}: HMAC does not match (the record was "
                                "rewritten, or written under another key)")
                    return records, prev
                first_mac = first_mac or number
            elif first_mac is not None:
                verdict.add(BROKEN, f"line {number}: no HMAC although line {first_mac} has "
                            "one (records added or rewritten without the key)")
                return records, prev
        problem = _check_type(record, intents, run, after_record, handle)
        if problem:
            verdict.add(BROKEN, f"line {number}: {problem}")
            return records, prev
        if run:
            first, last = run[0].number, run[-1].number
            where = f"line {first}" if first == last else f"lines {first}-{last}"
            verdict.notes.append(f"{where}: not a whole record (an append cut short), kept and "
                                 f"skipped (line {number})")
        run = []
        records.append(record)
        numbers[record["hash"]] = number
        prev = record["hash"]
        after_record = line.offset + line.length + 1
    if run and not records and not run[0].looks_like_record:
        verdict.add(UNREADABLE, f"line {run[0].number} {run[0].problem}: not an audit log")
        return records, prev
    if run:
        verdict.add(INCOMPLETE, f"line {run[0].number} {run[0].problem}: the last append was "
                    "cut short (the writer died?); the next change keeps and skips it")
    if key is not None and records:
        if first_mac is None:
            verdict.add(BROKEN, "no record carries an HMAC although a key was given: the log "
                        "was written without the key, or rewritten")
        elif first_mac > 1:
            verdict.notes.append(f"the records before line {first_mac} predate the HMAC key "
                                 "(not authenticated; later records vouch for them)")
    elif key is None and any("mac" in r for r in records):
        verdict.notes.append(f"records carry HMACs: set {HMAC_KEY_ENV} to check them")
    return records, prev


def _check_type(record: dict[str, Any], intents: dict[str, str], run: list[Line],
                after_record: int, handle) -> str:
    """Why this record is not what its `type` requires ("" when it is)."""
    kind = record.get("type")
    if kind is None:
        return ""
    if kind == INTENT:
        if not isinstance(record.get("target"), str) or not isinstance(record.get("deadline"),
                                                                       str):
            return "an intent without its target or deadline"
        intents[record["hash"]] = record["target"]
        return ""
    if kind == OUTCOME:
        intent = record.get("intent")
        if not isinstance(intent, str) or intent not in intents:
            return "an outcome of no earlier intent"
        if record.get("result") not in RESULTS:
            return "an outcome with an unknown result"
        if record.get("target") != intents[intent]:
            return "an outcome naming another target than its intent"
        return ""
    if kind == NOTE and record.get("note") == SKIPPED:
        return _check_skipped(record, run, after_record, handle)
    return f"unknown record type {str(kind)[:40]!r}"


def _check_skipped(record: dict[str, Any], run: list[Line], after_record: int, handle) -> str:
    """A `skipped` note must name exactly the bytes between the previous record and itself."""
    if not run:
        return "a note of skipped bytes where nothing was skipped"
    end = run[-1].offset + run[-1].length
    offset, length = record.get("offset"), record.get("length")
    if offset != after_record or length != end - after_record:
        return "a note of skipped bytes that does not name the bytes before it"
    handle.seek(after_record)
    digest, left = hashlib.sha256(), end - after_record
    while left > 0:
        block = handle.read(min(left, 1024 * 1024))
        if not block:
            break
        digest.update(block)
        left -= len(block)
    if digest.hexdigest() != record.get("sha256"):
        return "the skipped bytes were changed since the note about them"
    handle.seek(0, os.SEEK_END)
    return ""


def _check_against_cluster(records: list[dict[str, Any]], numbers: dict[str, int],
                           cluster_heads: Callable[[list[str]], list[ObjectHead]],
                           server: str, now: datetime, verdict: _Verdict) -> int:
    """Each managed object the log's records on `server` target, against its audit head."""
    server = without_userinfo(server)
    changes: dict[str, list[dict[str, Any]]] = {}
    elsewhere = 0
    for record in records:
        if record.get("type") not in (None, INTENT) or not managed_target(record.get("target")):
            continue
        if _server(record) != server:
            elsewhere += 1
            continue
        changes.setdefault(record["target"], []).append(record)
    if elsewhere and not changes:
        raise BadInput("cluster", server, "no change in this audit log was made on this "
                       f"cluster ({elsewhere} were made on others)")
    if elsewhere:
        verdict.notes.append(f"{elsewhere} changes were made on other clusters (not checked)")
    final = _final_outcomes(records)
    by_hash = {str(r["hash"]): r for r in records}
    objects = cluster_heads(sorted(changes))
    for obj in objects:
        _check_object(obj, changes.get(obj.target, []), final, by_hash, numbers, now, verdict)
    return len(objects)


def _state(record: dict[str, Any], final: dict[str, dict[str, Any]]) -> str:
    """APPLIED, one of NOT_APPLIED_RESULTS, or UNKNOWN (no final outcome) for a change."""
    if record.get("type") != INTENT:
        return APPLIED  # an old-style record was written once the change was applied
    return str(final.get(record["hash"], {}).get("result", UNKNOWN))


def _check_object(obj: ObjectHead, changes: list[dict[str, Any]],
                  final: dict[str, dict[str, Any]], by_hash: dict[str, dict[str, Any]],
                  numbers: dict[str, int], now: datetime, verdict: _Verdict) -> None:
    target = obj.target
    if not obj.found:
        verdict.notes.append(f"{target} no longer exists: its records are not anchored")
        return
    if obj.head is None:
        verdict.add(BROKEN, f"{target} carries no audit head although the log records changes "
                    "to it (its annotations were removed, or it was recreated)")
        return
    head = obj.head
    shown = str(head)[:SHOWN]
    record = by_hash.get(head)
    if record is None:
        verdict.add(BROKEN, f"{target} carries audit head {shown}… which is not in the log: "
                    "records were cut from its end or rewritten, or a later change was recorded "
                    "in another log")
        return
    if record.get("target") != target:
        verdict.add(BROKEN, f"{target} carries audit head {shown}… which is a record of "
                    f"{str(record.get('target'))[:80]}")
        return
    line = numbers[head]
    chain = _applied_chain(by_hash, head, target)
    for change in changes:
        state, seq = _state(change, final), numbers[change["hash"]]
        if change["hash"] in chain:
            if state == UNKNOWN:
                verdict.add(INCOMPLETE, f"line {seq}: the change to {target} was applied (the "
                            "cluster carries it) but its outcome was never recorded (its "
                            "process died); the next change records it")
            elif state != APPLIED:
                verdict.add(BROKEN, f"line {seq}: {target} carries this change, which the "
                            f"log records as {state}")
            continue
        later = seq > line
        if state == APPLIED and later:
            verdict.add(BROKEN, f"line {seq}: the log records a later applied change to "
                        f"{target} than the one the cluster carries (line {line}): the "
                        "object's head was reset, or the log was forged")
        elif state == UNKNOWN and later:
            if _expired(str(change.get("deadline") or ""), now):
                verdict.notes.append(f"line {seq}: the unfinished change to {target} was not "
                                     "applied (the cluster does not carry it)")
            else:
                verdict.add(INCOMPLETE, f"line {seq}: the change to {target} is still in "
                            "flight (no outcome yet)")
        elif state == UNKNOWN:
            verdict.notes.append(f"line {seq}: the unfinished change to {target} was "
                                 "superseded; whether it was applied is not known")
