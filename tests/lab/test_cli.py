"""`canarykit lab` on a base install: without the [lab] extra it says so, in one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

MISSING = "the lab needs canarykit[lab]: pip install 'canarykit[lab]' (missing: jsonpatch)"


def run_without_jsonpatch(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """`canarykit ARGV` in a fresh interpreter where importing jsonpatch fails, as on a base
    install; it prints which canarykit.lab modules were loaded on its last stderr line."""
    code = (
        "import json, sys\n"
        "sys.modules['jsonpatch'] = None\n"
        "from canarykit.cli.main import main\n"
        "try:\n"
        f"    code = main({argv!r})\n"
        "except SystemExit as exc:\n"
        "    code = exc.code\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('canarykit.lab.'))\n"
        "print(json.dumps(loaded), file=sys.stderr)\n"
        "sys.exit(code)\n"
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=cwd, timeout=120, check=False)


def _lines(done: subprocess.CompletedProcess) -> tuple[list[str], list[str]]:
    *lines, loaded = done.stderr.splitlines()
    return lines, json.loads(loaded)


@pytest.mark.parametrize("argv", [["lab", "apiserver", "--help"],
                                  ["lab", "apiserver", "--port", "0"],
                                  ["lab", "up", "--data-dir", "lab"]])
def test_a_lab_command_needing_the_extra_says_so_in_one_line(argv, tmp_path):
    done = run_without_jsonpatch(argv, tmp_path)
    lines, _ = _lines(done)
    assert done.returncode == 1
    assert lines == [f"canarykit: error: {MISSING}"]
    assert not (tmp_path / "lab").exists()  # `up` refused before starting anything


def test_lab_status_works_without_the_extra_and_never_loads_the_apiserver(tmp_path):
    done = run_without_jsonpatch(["lab", "status", "--data-dir", "lab"], tmp_path)
    lines, loaded = _lines(done)
    assert lines == [], done.stderr
    assert "no lab in" in done.stdout
    assert "canarykit.lab.processes" in loaded
    assert "canarykit.lab.apiserver" not in loaded


def test_lab_apiserver_help_lists_its_options_when_the_extra_is_installed(capsys):
    from canarykit.cli.main import main

    with pytest.raises(SystemExit) as exit_:
        main(["lab", "apiserver", "--help"])
    assert exit_.value.code == 0
    assert "--kubeconfig" in capsys.readouterr().out
