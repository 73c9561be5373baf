import contextlib
import functools
import io
import json
import multiprocessing
import os
import re
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from canarykit.cluster import audit
from canarykit.core.errors import BadInput, CanaryKitError
from tests import release_fixture


def _write_three(path):
    for n in range(3):
        release_fixture.append_record(
            path, {"operation": "set_canary_weight", "params": {"canaryWeight": n * 10}}
        )


def test_records_are_chained_and_numbered(tmp_path):
    log = tmp_path / "audit.jsonl"
    _write_three(log)
    records = audit.read_records(log)
    assert [r["seq"] for r in records] == [1, 2, 3]
    assert records[0]["prev"] == audit.GENESIS
    assert records[1]["prev"] == records[0]["hash"]
    assert records[2]["prev"] == records[1]["hash"]
    check = audit.verify_chain(log)
    assert check.ok and check.records == 3 and check.head == records[2]["hash"]


def test_an_edited_record_is_detected(tmp_path):
    log = tmp_path / "audit.jsonl"
    _write_three(log)
    lines = log.read_text().splitlines()
    record = json.loads(lines[1])
    record["params"]["canaryWeight"] = 100
    lines[1] = json.dumps(record, sort_keys=True)
    log.write_text("\n".join(lines) + "\n")
    check = audit.verify_chain(log)
    assert not check.ok
    assert "line 2" in check.problem and "edited" in check.problem


def test_a_removed_record_is_detected(tmp_path):
    log = tmp_path / "audit.jsonl"
    _write_three(log)
    lines = log.read_text().splitlines()
    log.write_text(lines[0] + "\n" + lines[2] + "\n")
    check = audit.verify_chain(log)
    assert not check.ok and "line 2" in check.problem


def test_a_rehashed_forgery_is_caught_by_the_head_kept_in_the_cluster(tmp_path):
    log = tmp_path / "audit.jsonl"
    _write_three(log)
    head_in_cluster = audit.read_records(log)[-1]["hash"]
    lines = log.read_text().splitlines()
    log.write_text("\n".join(lines[:2]) + "\n")  # last record cut off: the chain itself is intact
    assert audit.verify_chain(log).ok
    check = audit.verify_chain(log, expected_heads={head_in_cluster})
    assert not check.ok and "removed from the end" in check.problem


def test_concurrent_appenders_produce_one_valid_chain(tmp_path):
    log = tmp_path / "audit.jsonl"
    workers = [multiprocessing.Process(target=_write_three, args=(log,)) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    check = audit.verify_chain(log)
    assert check.ok and check.records == 12


def test_a_missing_log_does_not_verify(tmp_path):
    check = audit.verify_chain(tmp_path / "nothing.jsonl")
    assert not check.ok and "does not exist" in check.problem


# --- changes as intent and outcome ----------------------------------------------------------

SERVER = "https://kube.example:6443"
VS_REF = "VirtualService shop/reviews"
DR_REF = "DestinationRule shop/reviews"
LATER = datetime(2999, 1, 1, tzinfo=UTC)  # every deadline has passed


def _intent(log, target=VS_REF, weight=10, base=None, deadline="2100-01-01T00:00:00Z",
            server=SERVER):
    """Append the intent of a change as apply_change does, before anything is sent."""
    with audit.locked_log(log) as held:
        return held.append({"type": audit.INTENT, "actor": "alice", "server": server,
                            "target": target, "operation": "set_canary_weight",
                            "params": {"canaryWeight": weight}, "baseAuditHead": base,
                            "deadline": deadline})


def _outcome(log, intent, result=audit.APPLIED):
    with audit.locked_log(log) as held:
        return held.append({"type": audit.OUTCOME, "intent": intent["hash"],
                            "target": intent["target"], "result": result})


def _change(log, target=VS_REF, weight=10, base=None, result=audit.APPLIED):
    intent = _intent(log, target, weight, base)
    _outcome(log, intent, result)
    return intent


def _heads(mapping):
    """A stand-in for the cluster: target -> audit head (None: no head; absent: no object)."""
    def read(targets):
        return [audit.ObjectHead(t, t in mapping, mapping.get(t)) for t in targets]
    return read


def _against(log, mapping, **kwargs):
    return audit.verify_chain(log, cluster_heads=_heads(mapping), server=SERVER, **kwargs)


def test_a_change_is_an_intent_then_its_outcome_and_readers_see_the_change(tmp_path):
    log = tmp_path / "audit.jsonl"
    first = _change(log, weight=10)
    refused = _change(log, weight=50, base=first["hash"], result=audit.CONFLICT)
    raw = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(r.get("type"), r.get("result")) for r in raw] == [
        ("intent", None), ("outcome", "applied"), ("intent", None), ("outcome", "conflict")]
    assert raw[1]["intent"] == first["hash"]
    assert audit.read_records(log) == [first]  # the refused change never happened
    assert refused not in audit.read_records(log)
    check = audit.verify_chain(log)
    assert check.ok and check.records == 4 and check.changes == 2


def test_an_intent_without_outcome_is_reported_offline(tmp_path):
    log = tmp_path / "audit.jsonl"
    _change(log, weight=10)
    _intent(log, weight=30)  # the process died after recording its intent
    check = audit.verify_chain(log)
    assert check.status == audit.INCOMPLETE and not check.ok
    assert "line 3: the change to VirtualService shop/reviews has no outcome" in check.problem


def test_against_the_cluster_an_unrecorded_outcome_of_an_applied_change_is_found(tmp_path):
    log = tmp_path / "audit.jsonl"
    first = _change(log, weight=10)
    dying = _intent(log, weight=30, base=first["hash"])
    check = _against(log, {VS_REF: dying["hash"]})  # the PUT landed, the outcome never came
    assert check.status == audit.INCOMPLETE
    assert "line 3: the change to VirtualService shop/reviews was applied" in check.problem
    assert "outcome was never recorded" in check.problem


def test_against_the_cluster_a_change_that_never_landed_is_a_note_once_given_up(tmp_path):
    log = tmp_path / "audit.jsonl"
    first = _change(log, weight=10)
    _intent(log, weight=30, base=first["hash"])
    in_flight = _against(log, {VS_REF: first["hash"]})
    assert in_flight.status == audit.INCOMPLETE and "still in flight" in in_flight.problem
    given_up = _against(log, {VS_REF: first["hash"]}, now=LATER)
    assert given_up.ok
    assert any("was not applied" in note for note in given_up.notes)


def test_records_cut_from_the_end_are_found_against_the_cluster(tmp_path):
    log = tmp_path / "audit.jsonl"
    first = _change(log, weight=10)
    last = _change(log, weight=20, base=first["hash"])
    lines = log.read_text().splitlines(keepends=True)
    log.write_text("".join(lines[:2]))  # the last change cut off: the chain itself is intact
    assert audit.verify_chain(log).ok
    check = _against(log, {VS_REF: last["hash"]})
    assert check.status == audit.BROKEN
    assert f"carries audit head {last['hash'][:12]}… which is not in the log" in check.problem


def test_only_the_outcome_cut_from_the_end_is_found_against_the_cluster(tmp_path):
    log = tmp_path / "audit.jsonl"
    applied = _change(log, weight=10)
    log.write_text("".join(log.read_text().splitlines(keepends=True)[:1]))
    check = _against(log, {VS_REF: applied["hash"]})
    assert check.status == audit.INCOMPLETE and "was applied" in check.problem


def _rewrite(log, edit):
    """What a forger who can write the file does: edit, then recompute every hash in order."""
    prev, out, renamed = audit.GENESIS, [], {}
    for line in log.read_text().splitlines():
        record = json.loads(line)
        edit(record)
        for link in ("intent", "baseAuditHead"):
            if record.get(link) in renamed:
                record[link] = renamed[record[link]]
        record["prev"] = prev
        old = record.pop("hash")
        record["hash"] = renamed[old] = audit.record_hash(record)
        prev = record["hash"]
        out.append(json.dumps(record, sort_keys=True))
    log.write_text("\n".join(out) + "\n")


def _lower_the_weight(record):
    if "params" in record:
        record["params"]["canaryWeight"] = 1


def test_a_whole_chain_rewrite_is_found_by_the_head_kept_in_the_cluster(tmp_path):
    log = tmp_path / "audit.jsonl"
    first = _change(log, weight=10)
    dr = _change(log, DR_REF, weight=0)
    head = _change(log, weight=20, base=first["hash"])
    _rewrite(log, _lower_the_weight)
    assert audit.verify_chain(log).ok  # the log alone cannot tell
    check = _against(log, {VS_REF: head["hash"], DR_REF: dr["hash"]})
    assert check.status == audit.BROKEN and "not in the log" in check.problem
    assert len(check.problems) == 2  # both objects' heads are gone from the rewritten log


def test_every_object_sharing_the_log_must_carry_its_newest_change(tmp_path):
    log = tmp_path / "audit.jsonl"
    vs = _change(log, weight=10)
    dr = _change(log, DR_REF, weight=0)
    newer_vs = _change(log, weight=20, base=vs["hash"])
    assert _against(log, {VS_REF: newer_vs["hash"], DR_REF: dr["hash"]}).checked == 2
    reset = _against(log, {VS_REF: vs["hash"], DR_REF: dr["hash"]})  # head reset by someone
    assert reset.status == audit.BROKEN
    assert "a later applied change to VirtualService shop/reviews" in reset.problem
    other = _against(log, {VS_REF: dr["hash"], DR_REF: dr["hash"]})
    assert other.status == audit.BROKEN and "a record of DestinationRule" in other.problem
    bare = _against(log, {VS_REF: None, DR_REF: dr["hash"]})
    assert bare.status == audit.BROKEN and "carries no audit head" in bare.problem
    gone = _against(log, {DR_REF: dr["hash"]})
    assert gone.ok and any("no longer exists" in note for note in gone.notes)


def test_a_log_of_another_cluster_cannot_be_checked_against_this_one(tmp_path):
    log = tmp_path / "audit.jsonl"
    _change(log)
    with pytest.raises(BadInput, match="no change in this audit log was made on this cluster"):
        audit.verify_chain(log, cluster_heads=_heads({}), server="https://other:6443")


def test_credentials_in_a_server_url_do_not_hide_its_records(tmp_path):
    log = tmp_path / "audit.jsonl"
    intent = _intent(log, server="https://bob:hunter2@kube.example:6443")  # an old record
    _outcome(log, intent)
    assert _against(log, {VS_REF: intent["hash"]}).ok


def test_settling_records_what_the_cluster_says_and_leaves_changes_in_flight(tmp_path):
    log = tmp_path / "audit.jsonl"
    first = _change(log, weight=10)
    landed = _intent(log, weight=20, base=first["hash"])
    lost = _intent(log, DR_REF, weight=0, deadline="2000-01-01T00:00:00Z")
    flying = _intent(log, "VirtualService shop/ratings")
    heads = {VS_REF: landed["hash"], DR_REF: None, "VirtualService shop/ratings": None}
    with audit.locked_log(log) as held:
        written = audit.settle(held, heads, actor="bob", server=SERVER)
    assert [(r["intent"], r["result"], r["reconciled"]) for r in written] == [
        (landed["hash"], audit.APPLIED, True), (lost["hash"], audit.NOT_APPLIED, True)]
    with audit.locked_log(log) as held:
        assert [u.hash for u in audit.unfinished(held.records())] == [flying["hash"]]
    with audit.locked_log(log) as held:  # a second writer settling the same: nothing new
        assert audit.settle(held, heads, actor="carol", server=SERVER) == []
    assert audit.read_records(log)[-1] == flying and lost not in audit.read_records(log)


def test_a_change_the_object_went_past_was_applied(tmp_path):
    log = tmp_path / "audit.jsonl"
    dying = _intent(log, weight=10)
    later = _change(log, weight=20, base=dying["hash"])  # made on top of the dying change
    with audit.locked_log(log) as held:
        written = audit.settle(held, {VS_REF: later["hash"]}, actor="bob", server=SERVER)
    assert [(r["intent"], r["result"]) for r in written] == [(dying["hash"], audit.APPLIED)]


# --- a line that is not a whole record -----------------------------------------------------


def _three_changes(log):
    for weight in (10, 20, 30):
        _change(log, weight=weight)


@pytest.mark.parametrize("tail", [b'{"seq": 7, "time": "2024-05-01T12:0',  # cut short
                                  b'{"seq": 7, "operation": "x"}\n',  # no hash
                                  b'\xe2\x82',  # half a UTF-8 character
                                  b"[1, 2]\n"])
def test_a_torn_last_line_is_reported_and_the_next_writer_recovers(tmp_path, tail):
    log = tmp_path / "audit.jsonl"
    _three_changes(log)
    with open(log, "ab") as out:
        out.write(tail)
    check = audit.verify_chain(log)
    assert check.status == audit.INCOMPLETE and "line 7" in check.problem
    assert "cut short" in check.problem
    assert len(audit.read_records(log)) == 3  # readers skip it

    after = _change(log, weight=40)

    data = log.read_bytes()
    assert tail.rstrip(b"\n") in data  # kept, not rewritten
    note = json.loads(data.splitlines()[7])
    assert (note["type"], note["note"]) == ("note", "skipped")
    assert note["prev"] == json.loads(data.splitlines()[5])["hash"] and note["seq"] == 7
    check = audit.verify_chain(log)
    assert check.ok, check.problem
    assert check.records == 9
    assert check.notes == ["line 7: not a whole record (an append cut short), kept and skipped "
                           "(line 8)"]
    assert audit.read_records(log)[-1] == after


def test_a_torn_very_first_append_is_recovered(tmp_path):
    log = tmp_path / "audit.jsonl"
    log.write_bytes(b'{"actor": "alice", "seq": 1, "ti')
    _change(log)
    check = audit.verify_chain(log)
    assert check.ok and check.records == 3


def test_bytes_changed_after_they_were_skipped_are_found(tmp_path):
    log = tmp_path / "audit.jsonl"
    _three_changes(log)
    with open(log, "ab") as out:
        out.write(b'{"seq": 7, "ti')
    _change(log)
    log.write_bytes(log.read_bytes().replace(b'{"seq": 7, "ti', b'{"seq": 8, "ti'))
    check = audit.verify_chain(log)
    assert check.status == audit.BROKEN and "skipped bytes were changed" in check.problem


@pytest.mark.parametrize("line, problem", [(b"[1, 2]", "is not a JSON object"),
                                           (b"\xff\xfe{}", "is not UTF-8 text"),
                                           (b"{not json", "is not JSON")])
def test_a_line_in_the_middle_that_is_not_a_record_makes_the_log_unreadable(
    tmp_path, line, problem
):
    log = tmp_path / "audit.jsonl"
    _three_changes(log)
    lines = log.read_bytes().splitlines(keepends=True)
    log.write_bytes(b"".join(lines[:2]) + line + b"\n" + b"".join(lines[2:]))
    check = audit.verify_chain(log)
    assert check.status == audit.UNREADABLE and f"line 3 {problem}" in check.problem
    with pytest.raises(BadInput, match=f"is not an audit log: line 3 {problem}"):
        audit.read_records(log)


def test_a_file_that_is_not_an_audit_log_is_not_written_to(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# Notes\nnothing to see\n")
    with pytest.raises(BadInput, match="is not an audit log: it holds no whole record"):
        _change(readme)
    assert readme.read_text() == "# Notes\nnothing to see\n"
    with pytest.raises(BadInput, match="is a folder"):
        _change(tmp_path)
    assert audit.verify_chain(tmp_path).status == audit.UNREADABLE


def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path):
    fifo = tmp_path / "audit.jsonl"
    os.mkfifo(fifo)
    started = time.monotonic()
    assert audit.verify_chain(fifo).status == audit.UNREADABLE
    with pytest.raises(BadInput, match="is not a regular file"):
        audit.read_records(fifo)
    assert time.monotonic() - started < 5


def test_an_overlong_line_is_read_past_not_held(tmp_path, monkeypatch):
    monkeypatch.setattr(audit, "MAX_LINE_BYTES", 1000)
    log = tmp_path / "audit.jsonl"
    _three_changes(log)
    with open(log, "ab") as out:
        out.write(b'{"seq": 7' + b" " * 5000 + b"}\n")
    check = audit.verify_chain(log)
    assert check.status == audit.INCOMPLETE and "longer than 1,000 bytes" in check.problem


# --- the HMAC ------------------------------------------------------------------------------

KEY = "k" * 32


def test_with_a_key_every_record_carries_an_hmac_and_verifies(tmp_path, monkeypatch):
    monkeypatch.setenv(audit.HMAC_KEY_ENV, KEY)
    log = tmp_path / "audit.jsonl"
    _three_changes(log)
    raw = [json.loads(line) for line in log.read_text().splitlines()]
    assert all(r["mac"] == audit.record_mac(r, KEY.encode()) for r in raw)
    assert audit.verify_chain(log, key=KEY.encode()).ok
    unkeyed = audit.verify_chain(log)
    assert unkeyed.ok and "set CANARYKIT_AUDIT_HMAC_KEY to check them" in unkeyed.notes[0]


def test_a_whole_chain_rewrite_without_the_key_is_found_with_it(tmp_path, monkeypatch):
    monkeypatch.setenv(audit.HMAC_KEY_ENV, KEY)
    log = tmp_path / "audit.jsonl"
    _three_changes(log)
    original = log.read_text()
    _rewrite(log, _lower_the_weight)
    check = audit.verify_chain(log, key=KEY.encode())
    assert check.status == audit.BROKEN and "line 1: HMAC does not match" in check.problem

    log.write_text(original)
    _rewrite(log, lambda record: (_lower_the_weight(record), record.pop("mac")))
    check = audit.verify_chain(log, key=KEY.encode())
    assert check.status == audit.BROKEN and "no record carries an HMAC" in check.problem

    log.write_text(original)
    monkeypatch.delenv(audit.HMAC_KEY_ENV)
    _change(log, weight=99)  # appended by someone without the key
    check = audit.verify_chain(log, key=KEY.encode())
    assert check.status == audit.BROKEN and "line 7: no HMAC although line 1 has one" in \
        check.problem


def test_records_from_before_the_key_are_vouched_for_by_later_ones(tmp_path, monkeypatch):
    log = tmp_path / "audit.jsonl"
    _change(log)
    monkeypatch.setenv(audit.HMAC_KEY_ENV, KEY)
    _change(log)
    check = audit.verify_chain(log, key=KEY.encode())
    assert check.ok and "before line 3 predate the HMAC key" in check.notes[0]


def test_a_short_key_is_refused_without_showing_it(monkeypatch):
    monkeypatch.setenv(audit.HMAC_KEY_ENV, "secret")
    with pytest.raises(BadInput) as refused:
        audit.hmac_key()
    assert "secret" not in str(refused.value) and "6 bytes" in str(refused.value)


# --- the lock ------------------------------------------------------------------------------


def test_a_lock_held_too_long_is_an_error_not_a_hang(tmp_path):
    log = tmp_path / "audit.jsonl"
    with audit.locked_log(log):
        started = time.monotonic()
        with pytest.raises(CanaryKitError, match="held its lock for more than 0.2 s"):
            with audit.locked_log(log, wait=0.2):
                pass
        assert time.monotonic() - started < 2


# --- hostile logs: never a traceback, bounded time -----------------------------------------

_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                     lambda inner: st.lists(inner, max_size=3)
                     | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=8)
_FIELDS = ("seq", "prev", "hash", "mac", "type", "intent", "result", "target", "offset",
           "length", "sha256", "deadline", "baseAuditHead", "server")


@functools.cache
def _sample_log(keyed: bool) -> bytes:
    """A log holding every kind of record: old-style, event, intent and outcome, a skipped
    torn tail, an unfinished change; written with and without an HMAC key."""
    saved = os.environ.pop(audit.HMAC_KEY_ENV, None)
    with tempfile.TemporaryDirectory(prefix="canarykit-fuzz-") as folder:
        log = Path(folder) / "audit.jsonl"
        _write_sample(log, keyed)
        data = log.read_bytes()
    if saved is not None:
        os.environ[audit.HMAC_KEY_ENV] = saved
    return data


def _write_sample(log: Path, keyed: bool) -> None:
    try:
        if keyed:
            os.environ[audit.HMAC_KEY_ENV] = KEY
        release_fixture.append_record(log, {"operation": "set_canary_weight", "target": VS_REF,
                                            "server": SERVER, "params": {"canaryWeight": 5}})
        release_fixture.append_record(log, {"operation": "approval-approved",
                                            "target": "release/r1"})
        first = _change(log, weight=10)
        _change(log, DR_REF, weight=0, result=audit.FAILED)
        with open(log, "ab") as out:
            out.write(b'{"seq": 9, "ti')
        _change(log, weight=20, base=first["hash"])
        _intent(log, weight=30)
    finally:
        os.environ.pop(audit.HMAC_KEY_ENV, None)


@st.composite
def _hostile_logs(draw) -> tuple[bytes, bool]:
    keyed = draw(st.booleans())
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=3000)), keyed
    data = _sample_log(keyed)
    for _ in range(draw(st.integers(0, 3))):
        lines = data.split(b"\n")
        at = draw(st.integers(0, max(len(lines) - 1, 0)))
        how = draw(st.sampled_from(["delete", "duplicate", "swap", "replace", "flip",
                                    "truncate", "insert", "field"]))
        if how == "delete":
            del lines[at]
        elif how == "duplicate":
            lines.insert(at, lines[at])
        elif how == "swap":
            other = draw(st.integers(0, len(lines) - 1))
            lines[at], lines[other] = lines[other], lines[at]
        elif how == "replace":
            lines[at] = draw(st.binary(max_size=200))
        elif how == "field":
            try:
                record = json.loads(lines[at])
                record[draw(st.sampled_from(_FIELDS))] = draw(_JSON)
                lines[at] = json.dumps(record).encode()
            except (ValueError, TypeError):
                pass
        data = b"\n".join(lines)
        position = draw(st.integers(0, len(data)))
        if how == "flip" and data:
            position = min(position, len(data) - 1)
            data = data[:position] + bytes([data[position] ^ draw(st.integers(1, 255))]) + \
                data[position + 1:]
        elif how == "truncate":
            data = data[:position]
        elif how == "insert":
            data = data[:position] + draw(st.binary(max_size=100)) + data[position:]
    return data, keyed


def _only_a_torn_tail(check) -> bool:
    return check.status == audit.INCOMPLETE and len(check.problems) == 1 and \
        "cut short" in check.problem


@settings(max_examples=150, deadline=3000, suppress_health_check=[HealthCheck.too_slow])
@given(_hostile_logs(), st.sampled_from([None, "line", "cluster"]))
def test_audit_verify_survives_hostile_logs(case, heads):
    data, keyed = case
    with tempfile.TemporaryDirectory(prefix="canarykit-fuzz-") as folder:
        log = Path(folder) / "audit.jsonl"
        log.write_bytes(data)
        _survives(log, data, keyed, heads)


def _survives(log: Path, data: bytes, keyed: bool, heads: str | None) -> None:
    from canarykit.cli import main as cli

    key = KEY.encode() if keyed else None
    started = time.monotonic()
    check = audit.verify_chain(log, key=key)
    assert check.status in (audit.INTACT, audit.INCOMPLETE, audit.BROKEN, audit.UNREADABLE)
    assert check.ok == (check.status == audit.INTACT) and (check.ok or check.problem)
    if heads:
        hashes = re.findall(rb'"hash": "([0-9a-f]{64})"', data)
        pick = {VS_REF: hashes[-1].decode() if hashes else None, DR_REF: None}
        try:
            audit.verify_chain(log, key=key, cluster_heads=_heads(pick), server=SERVER)
        except BadInput:
            pass  # a log of another cluster
    try:
        audit.read_records(log)
    except BadInput:
        pass
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["audit", "verify", str(log)])
    assert code in (0, 1, 2)
    assert len(err.getvalue().splitlines()) <= 1 and "Traceback" not in err.getvalue()
    try:
        with audit.locked_log(log) as held:  # a writer recovers, or refuses in one line
            held.append({"operation": "note-from-fuzz", "target": "release/fuzz"})
    except BadInput:
        assert not check.ok
    else:
        if check.ok or _only_a_torn_tail(check):
            after = audit.verify_chain(log, key=None)
            assert after.status in (audit.INTACT, audit.INCOMPLETE) and \
                not _only_a_torn_tail(after), after.problem
    assert time.monotonic() - started < 3
