import json
import multiprocessing

from canarykit.cluster import audit
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
