"""The `canarykit` command as a user runs it, against the local API server."""

import copy
import json
import os
import subprocess
import sys
import time

import pytest
import yaml

from canarykit.cli import main as cli
from canarykit.cluster import client as cluster
from canarykit.cluster.state import ROLLOUT_ANNOTATION
from tests import release_fixture
from tests.apiserver_fixture import seed
from tests.cluster.test_client import (  # noqa: F401 (hung, stub_api: fixtures)
    DR,
    VS,
    _killed_while_changing,
    hung,
    stub_api,
)


@pytest.fixture
def kubeconfig(apiserver, tmp_path, monkeypatch):
    seed(apiserver, copy.deepcopy(VS), copy.deepcopy(DR))
    monkeypatch.setenv("CANARYKIT_AUDIT_LOG", str(tmp_path / "audit.jsonl"))
    return str(apiserver.kubeconfig)


def _weights(kubeconfig):
    report = cluster.status(cluster.connect(kubeconfig), "reviews")
    return {d.subset: d.weight for d in report.routes[1].destinations}


def test_weight_status_and_rollback(kubeconfig, tmp_path, capsys):
    assert cli.main(["weight", "reviews", "--canary", "20", "--kubeconfig", kubeconfig]) == 0
    out = capsys.readouterr().out
    assert "VirtualService default/reviews: changed" in out
    assert "+      weight: 20" in out
    assert _weights(kubeconfig) == {"v1": 80, "v2": 20}

    assert cli.main(["status", "reviews", "--kubeconfig", kubeconfig, "--output", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["rollout"]["canary"] == "v2"

    assert cli.main(["rollback", "reviews", "--kubeconfig", kubeconfig]) == 0
    assert _weights(kubeconfig) == {"v1": 100, "v2": 0}
    capsys.readouterr()

    assert cli.main(["audit", "verify", str(tmp_path)]) == 0
    assert "audit chain intact, 8 records (4 changes)" in capsys.readouterr().out


def test_weight_dry_run_prints_the_diff_and_changes_nothing(kubeconfig, capsys):
    assert (
        cli.main(["weight", "reviews", "--canary", "50", "--dry-run", "--kubeconfig", kubeconfig])
        == 0
    )
    out = capsys.readouterr().out
    assert "server dry run, nothing written" in out and "weight: 50" in out
    assert _weights(kubeconfig) == {"v1": 100, "v2": 0}


def test_a_weight_of_130_is_refused_naming_the_flag_and_value(kubeconfig, capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(["weight", "reviews", "--canary", "130", "--kubeconfig", kubeconfig])
    assert stop.value.code == 2
    assert "--canary: must be a whole number from 0 to 100 (got 130)" in capsys.readouterr().err
    assert _weights(kubeconfig) == {"v1": 100, "v2": 0}


def test_an_unknown_subset_is_refused_with_exit_2_and_nothing_changes(kubeconfig, capsys):
    code = cli.main(
        ["weight", "reviews", "--canary", "10", "--canary-subset", "v7", "--kubeconfig", kubeconfig]
    )
    assert code == 2
    assert "v7" in capsys.readouterr().err
    assert _weights(kubeconfig) == {"v1": 100, "v2": 0}


def test_rollback_with_no_rollout_fails_with_exit_1(kubeconfig, capsys):
    assert cli.main(["rollback", "reviews", "--kubeconfig", kubeconfig]) == 1
    assert "nothing to roll back" in capsys.readouterr().err


def test_audit_verify_exits_non_zero_on_a_tampered_log(kubeconfig, tmp_path, capsys):
    cli.main(["weight", "reviews", "--canary", "20", "--kubeconfig", kubeconfig])
    log = tmp_path / "audit.jsonl"
    log.write_text(log.read_text().replace('"canary_weight": 20', '"canary_weight": 2'))
    assert cli.main(["audit", "verify", str(log)]) == 1
    assert "BROKEN" in capsys.readouterr().err


def test_the_console_script_runs_as_a_module():
    done = subprocess.run(
        [sys.executable, "-m", "canarykit", "--version"], capture_output=True, text=True, check=True
    )
    assert done.stdout.startswith("canarykit ")


def _with_plugins(monkeypatch, *values):
    """Installed `canarykit.commands` entry points replaced by real EntryPoint objects."""
    from importlib import metadata

    plugins = [metadata.EntryPoint(name=f"part{i}", value=value, group=cli.COMMANDS_ENTRY_POINT)
               for i, value in enumerate(values)]
    monkeypatch.setattr(metadata, "entry_points", lambda group: plugins)


def test_a_plugin_that_fails_to_load_is_skipped_with_a_one_line_warning(monkeypatch, capsys):
    _with_plugins(monkeypatch, "canarykit_no_such_plugin:COMMANDS",
                  "canarykit.lab.commands:COMMANDS")
    assert "lab" in cli.plugin_commands()
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0
    out, err = capsys.readouterr()
    assert out.startswith("canarykit ")
    warnings = [line for line in err.splitlines() if line]
    assert len(warnings) == 1
    assert warnings[0].startswith("canarykit: warning: skipping the commands of part0 ")
    assert "canarykit_no_such_plugin" in warnings[0]


def test_the_other_commands_still_run_beside_a_broken_plugin(monkeypatch, tmp_path, capsys):
    import yaml

    _with_plugins(monkeypatch, "canarykit.cli.main:no_such_attribute")
    reviews = tmp_path / "reviews.yaml"
    reviews.write_text(yaml.safe_dump_all([VS, DR]))
    assert cli.main(["validate", str(reviews)]) == 0
    assert "skipping the commands of part0" in capsys.readouterr().err


# --- the audit log against the cluster ------------------------------------------------------


def _verify(*args):
    return cli.main(["audit", "verify", *[str(a) for a in args]])


def _one_line(text):
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, text
    assert "Traceback" not in text
    return lines[0]


def test_audit_verify_against_the_cluster_finds_records_cut_from_the_end(
    kubeconfig, tmp_path, capsys
):
    cli.main(["weight", "reviews", "--canary", "20", "--kubeconfig", kubeconfig])
    cli.main(["weight", "reviews", "--canary", "30", "--kubeconfig", kubeconfig])
    log = tmp_path / "audit.jsonl"
    assert _verify(log, "--kubeconfig", kubeconfig) == 0
    assert "checked against the cluster at http://127.0.0.1:" in capsys.readouterr().out
    log.write_text("".join(log.read_text().splitlines(keepends=True)[:-2]))
    assert _verify(log) == 0  # the file alone cannot tell
    capsys.readouterr()
    assert _verify(log, "--kubeconfig", kubeconfig) == 1
    line = _one_line(capsys.readouterr().err)
    assert "audit chain BROKEN: VirtualService default/reviews carries audit head" in line
    assert "which is not in the log" in line


def test_audit_verify_finds_a_change_killed_after_its_put_and_reconciles_it(
    apiserver, kubeconfig, tmp_path, capsys
):
    log = tmp_path / "audit.jsonl"
    cli.main(["weight", "reviews", "--canary", "20", "--kubeconfig", kubeconfig])
    _killed_while_changing(apiserver, log, 40, "after")
    capsys.readouterr()
    assert _verify(log, "--kubeconfig", kubeconfig) == 1
    line = _one_line(capsys.readouterr().err)
    assert "audit chain INCOMPLETE:" in line and "was applied (the cluster carries it)" in line
    assert _verify(log, "--kubeconfig", kubeconfig, "--reconcile") == 0
    assert _verify(log) == 0


def test_audit_verify_of_a_release_folder_uses_the_cluster_its_plan_names(
    kubeconfig, tmp_path, capsys, monkeypatch
):
    folder = tmp_path / "reports" / "reviews" / "v2-1"
    folder.mkdir(parents=True)
    (folder / "plan.yaml").write_text(f"service: reviews\nkubeconfig: {kubeconfig}\n")
    monkeypatch.setenv("CANARYKIT_AUDIT_LOG", str(folder / "audit.jsonl"))
    cli.main(["weight", "reviews", "--canary", "20", "--kubeconfig", kubeconfig])
    capsys.readouterr()
    assert _verify(folder, "--cluster") == 0
    assert "1 objects carry their newest change in it" in capsys.readouterr().out


def test_audit_verify_reconcile_needs_the_cluster(tmp_path, capsys):
    log = tmp_path / "audit.jsonl"
    log.write_text("")
    assert _verify(log, "--reconcile") == 2
    assert "--reconcile: needs the cluster" in _one_line(capsys.readouterr().err)


def test_a_torn_last_line_neither_blocks_the_next_change_nor_hides(kubeconfig, tmp_path, capsys):
    log = tmp_path / "audit.jsonl"
    cli.main(["weight", "reviews", "--canary", "20", "--kubeconfig", kubeconfig])
    with open(log, "ab") as out:
        out.write(b'{"actor": "canarykit-admin", "hash": "ab')
    capsys.readouterr()
    assert _verify(log) == 1
    assert "line 5 is not JSON: the last append was cut short" in capsys.readouterr().err
    assert cli.main(["weight", "reviews", "--canary", "30", "--kubeconfig", kubeconfig]) == 0
    assert _weights(kubeconfig) == {"v1": 70, "v2": 30}
    capsys.readouterr()
    assert _verify(log, "--kubeconfig", kubeconfig) == 0
    assert "note: line 5: not a whole record (an append cut short), kept and skipped" in \
        capsys.readouterr().out


@pytest.mark.parametrize("content, problem", [
    (b'{"seq": 1}\n[1, 2]\n{"seq": 2}\n', "line 2 is not a JSON object"),
    (b"\xff\xfe\x00\x01 binary", "line 1 is not UTF-8 text"),
    (b"# my notes\n", "line 1 is not JSON"),
])
def test_audit_verify_of_a_file_that_is_not_an_audit_log_is_bad_input(
    tmp_path, capsys, content, problem
):
    log = tmp_path / "audit.jsonl"
    if content.startswith(b'{"seq": 1}'):
        release_fixture.append_record(log, {"operation": "x"})
        release_fixture.append_record(log, {"operation": "y"})
        lines = log.read_bytes().splitlines(keepends=True)
        log.write_bytes(lines[0] + b"[1, 2]\n" + lines[1])
    else:
        log.write_bytes(content)
    assert _verify(log) == 2
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("canarykit: error: audit log: ") and problem in line


def test_audit_verify_of_a_missing_log_is_bad_input(tmp_path, capsys):
    assert _verify(tmp_path / "nothing.jsonl") == 2
    assert "no such audit log" in _one_line(capsys.readouterr().err)


# --- timeouts, secrets, hostile input ------------------------------------------------------


def test_weight_against_a_hung_server_fails_in_one_line_and_blocks_nobody(
    stub_api, tmp_path  # noqa: F811 (the fixture)
):
    server, stub_kubeconfig = stub_api
    log = tmp_path / "audit.jsonl"
    env = {**os.environ, "CANARYKIT_AUDIT_LOG": str(log)}
    weight = subprocess.Popen(
        [sys.executable, "-m", "canarykit", "weight", "reviews", "--canary", "10",
         "--kubeconfig", str(stub_kubeconfig), "--timeout", "3"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert server.hanging.wait(60)
        hung_at = time.monotonic()
        other = subprocess.run(  # a second writer meanwhile: gets the log at once
            [sys.executable, "-c", "import sys\nfrom canarykit.cluster import audit\n"
             "with audit.locked_log(sys.argv[1], wait=1) as log:\n"
             "    print(log.records()[-1]['type'])", str(log)],
            capture_output=True, text=True, timeout=60)
        assert (other.returncode, other.stdout.strip()) == (0, "intent"), other.stderr
        out, err = weight.communicate(timeout=60)
    finally:
        weight.kill()
    assert weight.returncode == 1
    line = _one_line(err)
    assert line.startswith("canarykit: error: changing VirtualService default/reviews: ")
    assert "no answer within 3 s" in line
    assert time.monotonic() - hung_at < 3 + 3


def test_status_against_a_server_that_never_answers_times_out(hung, capsys):  # noqa: F811
    _, hung_kubeconfig = hung
    started = time.monotonic()
    code = cli.main(["status", "reviews", "--kubeconfig", str(hung_kubeconfig), "--timeout", "1"])
    assert code == 1 and time.monotonic() - started < 4
    *retries, line = [text for text in capsys.readouterr().err.splitlines() if text.strip()]
    # a read that got no answer is tried once more within two timeouts, and says so
    assert len(retries) == 1 and "GET /apis/: no answer in time; trying again" in retries[0]
    assert "cannot reach the Kubernetes API at http://127.0.0.1:" in line
    assert "no answer within 1 s" in line


def test_a_bad_timeout_is_bad_input(kubeconfig, capsys):
    assert cli.main(["status", "reviews", "--kubeconfig", kubeconfig, "--timeout", "0"]) == 2
    assert "--timeout: must be a number of seconds" in _one_line(capsys.readouterr().err)


def test_status_never_prints_credentials_of_the_server_url(apiserver, kubeconfig, tmp_path,
                                                           capsys):
    loaded = yaml.safe_load(apiserver.kubeconfig.read_text())
    url = loaded["clusters"][0]["cluster"]["server"]
    loaded["clusters"][0]["cluster"]["server"] = url.replace("://", "://bob:hunter2@")
    with_userinfo = tmp_path / "userinfo.yaml"
    with_userinfo.write_text(yaml.safe_dump(loaded))
    assert cli.main(["status", "reviews", "--kubeconfig", str(with_userinfo)]) == 0
    out = capsys.readouterr().out
    assert f"({url})" in out and "hunter2" not in out


@pytest.mark.parametrize("kind", ["/etc/passwd", "binary", "folder", "bad YAML", "/dev/zero"])
def test_a_kubeconfig_that_is_not_one_is_bad_input_in_one_line(tmp_path, capsys, kind):
    path = tmp_path / "kubeconfig"
    if kind.startswith("/"):
        path = kind
    elif kind == "binary":
        path.write_bytes(bytes(range(256)))
    elif kind == "folder":
        path.mkdir()
    else:
        path.write_text("clusters: [unclosed\n  token: s3cret-token\n")
    assert cli.main(["status", "reviews", "--kubeconfig", str(path)]) == 2
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("canarykit: error: --kubeconfig: is not a valid kubeconfig")
    assert "s3cret" not in line


@pytest.mark.parametrize("command", ["status", "rollback"])
def test_rollout_state_missing_its_snapshot_is_bad_input_in_one_line(
    apiserver, kubeconfig, capsys, command
):
    cli.main(["weight", "reviews", "--canary", "20", "--kubeconfig", kubeconfig])
    kube = cluster.connect(kubeconfig)
    vs = cluster.get_object(kube, "VirtualService", "reviews")
    state = json.loads(vs["metadata"]["annotations"][ROLLOUT_ANNOTATION])
    del state["snapshot"]["virtualService"]
    cluster.annotate(kube, "VirtualService", "reviews",
                     {"metadata": {"annotations": {ROLLOUT_ANNOTATION: json.dumps(state)}}})
    capsys.readouterr()
    assert cli.main([command, "reviews", "--kubeconfig", kubeconfig]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "snapshot.virtualService: must be the managed fields rollback restores" in line
