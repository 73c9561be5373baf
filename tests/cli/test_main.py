"""The `canarykit` command as a user runs it, against the local API server."""

import copy
import json
import subprocess
import sys

import pytest

from canarykit.cli import main as cli
from canarykit.cluster import client as cluster
from tests.apiserver_fixture import seed
from tests.cluster.test_client import DR, VS


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
    assert "audit chain intact, 4 records" in capsys.readouterr().out


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
