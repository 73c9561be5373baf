"""Release records in object storage, against a real S3-compatible server (moto)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import fsspec
import pytest

from canarykit.core.errors import BadInput
from canarykit.storage import records
from tests.storage.conftest import SECRET_KEY


def release_folder(path: Path, files: dict[str, str]) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (path / name).write_text(text)
    return path


def stored(url: str) -> dict[str, bytes]:
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    root = url.removeprefix("s3://")
    if not fs.exists(root):
        return {}
    return {info["name"].rsplit("/", 1)[-1]: fs.cat_file(info["name"])
            for info in fs.ls(root, detail=True, refresh=True) if info["type"] == "file"}


def put(url: str, name: str, text: str) -> None:
    fsspec.filesystem("s3", skip_instance_cache=True).pipe_file(
        f"{url.removeprefix('s3://')}/{name}", text.encode())


# ---------------------------------------------------------------- what a URL may be


@pytest.mark.parametrize("url, problem", [
    ("ftp://host/reports", "must be a folder or an s3://"),
    ("s3:///reports", "must name a bucket"),
    ("s3://bucket/a/../b", "must not contain . or .."),
    ("s3://bucket/reports?versionId=1", "must not carry credentials, a query"),
])
def test_a_url_canarykit_cannot_store_to_is_refused_naming_the_field(url, problem):
    with pytest.raises(BadInput, match=problem) as caught:
        records.check_url("reports", url)
    assert caught.value.field == "reports"


def test_credentials_in_the_url_are_refused_without_repeating_them():
    with pytest.raises(BadInput) as caught:
        records.check_url("reports", f"s3://AKIAX:{SECRET_KEY}@bucket/reports")
    assert SECRET_KEY not in str(caught.value)
    assert "from the environment" in str(caught.value)


def test_a_store_whose_backend_is_not_installed_says_which_extra_installs_it():
    with pytest.raises(BadInput, match=r"needs the gcsfs package: pip install 'canarykit\[gcs\]'"):
        records.check_url("reports", "gs://bucket/reports")
    assert records.check_url("reports", "gs://bucket/reports", installed=False)


def test_only_urls_are_stores_and_each_url_has_its_own_local_copy(monkeypatch, tmp_path):
    monkeypatch.setenv(records.SCRATCH_ENV, str(tmp_path))
    assert records.is_url("s3://bucket/reports") and not records.is_url("reports/s3:")
    first, second = (records.scratch_root(u) for u in ("s3://a/reports", "s3://b/reports"))
    assert first != second and first.parent == second.parent == tmp_path
    assert records.scratch_root("s3://a/reports/") == first


# ---------------------------------------------------------------- pushing and pulling


def test_a_pushed_release_folder_pulls_back_byte_for_byte_into_a_fresh_folder(bucket, tmp_path):
    url = f"{bucket}/reports/reviews/v2-1"
    folder = release_folder(tmp_path / "a", {"release.json": "{}", "audit.jsonl": "one\n",
                                             "01-preflight.ipynb": "{\"cells\": []}"})
    assert records.push(folder, url) == ["01-preflight.ipynb", "audit.jsonl", "release.json"]
    copy = tmp_path / "b"
    assert sorted(records.pull(url, copy)) == ["01-preflight.ipynb", "audit.jsonl",
                                               "release.json"]
    for name in ("release.json", "audit.jsonl", "01-preflight.ipynb"):
        assert (copy / name).read_bytes() == (folder / name).read_bytes()


def test_a_push_sends_only_what_changed_since_the_last_exchange(bucket, tmp_path):
    url = f"{bucket}/r"
    folder = release_folder(tmp_path / "a", {"release.json": "{}", "audit.jsonl": "one\n"})
    records.push(folder, url)
    assert records.push(folder, url) == []
    with open(folder / "audit.jsonl", "a") as log:
        log.write("two\n")
    (folder / "02-shift.ipynb").write_text("{}")
    assert records.push(folder, url) == ["02-shift.ipynb", "audit.jsonl"]
    assert stored(url)["audit.jsonl"] == b"one\ntwo\n"


def test_an_atomic_rewrite_of_the_same_size_is_still_sent(bucket, tmp_path):
    url = f"{bucket}/r"
    folder = release_folder(tmp_path / "a", {"release.json": '{"status": "a"}'})
    records.push(folder, url)
    (folder / "new").write_text('{"status": "b"}')
    os.replace(folder / "new", folder / "release.json")  # as write_atomically does
    assert records.push(folder, url) == ["release.json"]
    assert stored(url)["release.json"] == b'{"status": "b"}'


def test_hidden_files_locks_and_the_sync_state_stay_local(bucket, tmp_path):
    url = f"{bucket}/r"
    folder = release_folder(tmp_path / "a", {"release.json": "{}", ".hidden": "x",
                                             "audit.jsonl.lock": ""})
    records.push(folder, url)
    assert set(stored(url)) == {"release.json"}
    assert (folder / records.SYNC_FILE).exists()


def test_a_pull_fetches_what_another_runner_changed_and_keeps_what_this_one_did_not_send(
        bucket, tmp_path):
    url = f"{bucket}/r"
    folder = release_folder(tmp_path / "a", {"release.json": "{}", "audit.jsonl": "one\n"})
    records.push(folder, url)
    put(url, "release.json", '{"status": "promoted"}')  # another runner's newer state
    (folder / "audit.jsonl").write_text("one\nunsent\n")  # this runner could not push it
    assert records.pull(url, folder) == ["release.json"]
    assert (folder / "release.json").read_text() == '{"status": "promoted"}'
    assert (folder / "audit.jsonl").read_text() == "one\nunsent\n"
    assert records.push(folder, url) == ["audit.jsonl"]


def test_a_file_changed_on_both_sides_is_refused_not_merged(bucket, tmp_path):
    url = f"{bucket}/r"
    folder = release_folder(tmp_path / "a", {"audit.jsonl": "one\n"})
    records.push(folder, url)
    put(url, "audit.jsonl", "one\nthere\n")
    (folder / "audit.jsonl").write_text("one\nhere\n")
    with pytest.raises(BadInput, match="audit.jsonl changed both here"):
        records.pull(url, folder)
    assert (folder / "audit.jsonl").read_text() == "one\nhere\n"


def test_a_folder_the_store_does_not_hold_pulls_nothing(bucket, tmp_path):
    assert records.pull(f"{bucket}/none", tmp_path / "a") == []
    assert not records.exists(f"{bucket}/none")


# ---------------------------------------------------------------- a store that fails


def test_the_probe_proves_the_store_takes_writes_and_leaves_nothing_behind(bucket):
    records.probe(f"{bucket}/reports")
    assert stored(f"{bucket}/reports") == {}


def test_a_missing_bucket_is_one_clear_error_before_anything_changes(bucket):
    with pytest.raises(BadInput) as caught:
        records.probe("s3://no-such-bucket-here/reports")
    assert caught.value.field == "reports"
    assert "s3://no-such-bucket-here/reports" in str(caught.value)
    assert "cannot be written, so nothing was changed" in str(caught.value)
    assert "does not exist" in str(caught.value)


def test_an_unreachable_store_is_one_clear_error(bucket, monkeypatch):
    from tests.prometheus_fixture import free_port

    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{free_port()}")
    with pytest.raises(BadInput, match="cannot be written.*Could not connect"):
        records.probe(f"{bucket}/reports")
    with pytest.raises(BadInput, match="cannot be read.*Could not connect"):
        records.pull(f"{bucket}/reports/x", Path("unused"))


def test_a_push_the_store_refuses_keeps_the_local_copy_and_sends_it_next_time(
        bucket, tmp_path, monkeypatch):
    monkeypatch.setattr(records.time, "sleep", lambda seconds: None)
    folder = release_folder(tmp_path / "a", {"release.json": "{}", "audit.jsonl": "one\n"})
    missing = "s3://no-such-bucket-here/r"
    with pytest.raises(records.StorageError) as caught:
        records.push(folder, missing)
    assert "could not be stored" in str(caught.value) and str(folder) in str(caught.value)
    assert (folder / "audit.jsonl").read_text() == "one\n"
    assert records.push(folder, f"{bucket}/r") == ["audit.jsonl", "release.json"]


def test_store_errors_never_carry_a_url_credential():
    error = OSError("failed at https://user:hunter2@store.example/b: timeout")
    assert "hunter2" not in records.reason(error)


# ---------------------------------------------------------------- reading releases back


def test_the_newest_release_under_a_service_is_the_one_whose_summary_changed_last(
        bucket, tmp_path):
    for name in ("v2-a", "v2-c", "v2-b"):
        put(f"{bucket}/reports/reviews/{name}", "release.json", json.dumps({"release": name}))
        time.sleep(1.1)  # S3 keeps LastModified to the second
    assert records.newest_release(f"{bucket}/reports/reviews") == \
        f"{bucket}/reports/reviews/v2-b"


def test_fetch_gives_a_local_copy_that_remembers_where_it_came_from(bucket):
    url = f"{bucket}/reports/reviews/v2-a"
    put(url, "release.json", "{}")
    folder = records.fetch(url)
    assert (folder / "release.json").read_text() == "{}"
    assert records.origin(folder) == url
    with pytest.raises(BadInput, match="is not a release folder"):
        records.fetch(f"{bucket}/reports/reviews/none")
