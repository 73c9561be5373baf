"""Append-only audit log of every change canarykit applies, with a hash chain.

Each record is one JSON line. `hash` is the SHA-256 of the record's canonical JSON
(sorted keys, no `hash` field) and `prev` is the previous record's hash, so editing,
removing or reordering any record breaks the chain from that record on. The newest
hash is also written to the changed object's `canarykit.io/audit-head` annotation,
which lets a verifier notice records cut off the end of the file.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from canarykit.core import times

GENESIS = "0" * 64
DEFAULT_AUDIT_LOG = "reports/audit.jsonl"


def default_audit_log() -> Path:
    """The log named by CANARYKIT_AUDIT_LOG, else reports/audit.jsonl under the current folder."""
    return Path(os.environ.get("CANARYKIT_AUDIT_LOG") or DEFAULT_AUDIT_LOG)


def record_hash(record: dict[str, Any]) -> str:
    body = {k: v for k, v in record.items() if k != "hash"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _last_hash(handle) -> tuple[str, int]:
    """(hash, seq) of the newest record, read from the end: the log only grows."""
    fd = handle.fileno()
    position, tail = os.fstat(fd).st_size, b""
    while position > 0:
        step = min(4096, position)
        position -= step
        tail = os.pread(fd, step, position) + tail
        lines = [line for line in tail.split(b"\n") if line.strip()]
        if len(lines) > 1 or (lines and position == 0):  # the newest line is whole
            newest = json.loads(lines[-1])
            return newest["hash"], newest["seq"]
    return GENESIS, 0


class AuditLog:
    """An exclusive, locked hold on the log while one change is applied.

    `prepare` computes the next record (sequence number, link and hash) so the hash can
    travel with the change to the cluster; `write` appends it only once the change was
    applied. The lock keeps two processes on this machine from interleaving records.
    """

    def __init__(self, handle) -> None:
        self._handle = handle

    def prepare(self, entry: dict[str, Any]) -> dict[str, Any]:
        prev, count = _last_hash(self._handle)
        record = {
            "seq": count + 1,
            "time": entry.get("time") or times.timestamp(timespec="milliseconds"),
            **{k: v for k, v in entry.items() if k != "time"},
            "prev": prev,
        }
        record["hash"] = record_hash(record)
        return record

    def write(self, record: dict[str, Any]) -> None:
        self._handle.seek(0, os.SEEK_END)
        self._handle.write(json.dumps(record, sort_keys=True, ensure_ascii=False) + "\n")
        self._handle.flush()
        os.fsync(self._handle.fileno())


@contextmanager
def locked_log(path: Path | str) -> Iterator[AuditLog]:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+", encoding="utf-8") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield AuditLog(handle)
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def read_records(path: Path | str) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


@dataclass
class ChainCheck:
    ok: bool
    records: int
    problem: str = ""
    head: str = GENESIS

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "records": self.records, "problem": self.problem, "head": self.head}


def verify_chain(path: Path | str, expected_heads: set[str] | None = None) -> ChainCheck:
    """Check every record's hash and link; optionally that the chain contains `expected_heads`.

    `expected_heads` are the `canarykit.io/audit-head` annotations read from the cluster:
    each must be the hash of a record in the file, else records were cut off.
    """
    path = Path(path)
    if not path.exists():
        return ChainCheck(False, 0, f"audit log {path} does not exist")
    prev, seen = GENESIS, set()
    with open(path, encoding="utf-8") as handle:
        lines = [line for line in handle if line.strip()]
    for number, line in enumerate(lines, start=1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            return ChainCheck(False, number - 1, f"line {number}: not valid JSON", prev)
        if record.get("prev") != prev:
            return ChainCheck(
                False, number - 1, f"line {number}: link to the previous record is broken", prev
            )
        if record.get("seq") != number:
            return ChainCheck(False, number - 1, f"line {number}: sequence number is not {number}")
        if record_hash(record) != record.get("hash"):
            return ChainCheck(False, number - 1, f"line {number}: record was edited")
        prev = record["hash"]
        seen.add(prev)
    missing = sorted((expected_heads or set()) - seen)
    if missing:
        return ChainCheck(
            False,
            len(lines),
            f"the cluster names audit head {missing[0][:12]}… which is not in the log: "
            "records were removed from the end",
            prev,
        )
    return ChainCheck(True, len(lines), "", prev)
