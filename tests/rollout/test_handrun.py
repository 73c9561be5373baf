"""canarykit.rollout.handrun: a runbook run by hand leaves no secret on disk."""

from __future__ import annotations

import argparse
import json
import os
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path

import nbformat
import pytest

from canarykit.core.errors import BadInput, CanaryKitError, exit_code_for
from canarykit.rollout import handrun, runbook
from canarykit.rollout.parameters import packaged_runbooks
from tests import release_fixture

PAPERMILL = Path(sys.executable).parent / "papermill"


def main(argv: list[str]) -> int:
    """`canarykit runbook ...` as cli.main runs a module command: errors as one line."""
    parser = argparse.ArgumentParser(prog="canarykit runbook")
    handrun.add_arguments(parser)
    try:
        return int(handrun.run(parser.parse_args(argv)))
    except CanaryKitError as exc:
        print(f"canarykit: error: {exc}", file=sys.stderr)
        return exit_code_for(exc)


@pytest.fixture
def no_papermill(monkeypatch):
    """Fail the test if papermill is started."""
    def started():
        raise AssertionError("papermill was started")
    monkeypatch.setattr(runbook, "import_papermill", started)


def secret() -> str:
    """A fresh value that looks like an API key (so a leak cannot be a coincidence)."""
    return "sk-proj-" + uuid.uuid4().hex.upper() + uuid.uuid4().hex


def files_holding(root: Path, *values: str) -> list[Path]:
    """Every file under `root` (links not followed) holding one of `values`, as written
    or JSON-escaped."""
    forms = {form.encode() for v in values for form in (v, json.dumps(v)[1:-1])}
    found = []
    for folder, _, files in os.walk(root):
        for name in files:
            path = Path(folder) / name
            if path.is_symlink() or not path.is_file():
                continue
            data = path.read_bytes()
            if any(form in data for form in forms):
                found.append(path)
    return found


# ---------------------------------------------------------------- parameters


def test_parameters_are_read_as_their_declared_types():
    assert handrun.typed_parameters("shift-traffic", [
        ("canary_weight", "25"), ("release", "20240501"), ("service", "ratings")]) == {
        "canary_weight": 25, "release": "20240501", "service": "ratings"}
    assert handrun.typed_parameters("shadow", [("keep_mirror", "true"), ("alpha", "0.01")]) \
        == {"keep_mirror": True, "alpha": 0.01}


@pytest.mark.parametrize(("given", "named"), [
    ([("canary_weight", "a lot")], "canary_weight: must be a whole number"),
    ([("canary_weight", "2.5")], "canary_weight: must be a whole number"),
    ([("keep_mirror", "maybe")], "keep_mirror: must be true or false"),
    ([("alpha", "nan")], "alpha: must be a number"),
    ([("cannary_weight", "5")], "cannary_weight: is not a parameter of the"),
])
def test_a_parameter_that_is_unknown_or_not_its_type_is_refused(given, named):
    runbook_name = "shadow" if given[0][0] in ("keep_mirror", "alpha") else "shift-traffic"
    with pytest.raises(BadInput, match=named):
        handrun.typed_parameters(runbook_name, given)


def test_a_credential_is_refused_before_any_message_could_repeat_it():
    key = secret()
    for given in ([("api_key", key)], [("canary_weight", key)], [("note", f"Bearer {key}")]):
        with pytest.raises(BadInput) as refused:
            handrun.typed_parameters("shift-traffic", given)
        assert "looks like a credential" in str(refused.value)
        assert key not in str(refused.value)


# ---------------------------------------------------------------- canarykit runbook run


def test_run_with_a_credential_writes_nothing_and_never_starts_papermill(
        tmp_path, capsys, no_papermill):
    password = uuid.uuid4().hex
    output = tmp_path / "out.ipynb"
    assert main(["run", "shift-traffic", str(output), "-p", "canary_weight", "25",
                 "-p", "prometheus_url", f"http://reader:{password}@prom:9090"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("canarykit: error: prometheus_url: looks like a credential")
    assert password not in err and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("case", "named"), [
    ("symlink", "OUTPUT: is a symbolic link: refusing to write there"),
    ("suffix", "OUTPUT: must end in .ipynb"),
    ("folder", "OUTPUT: is in a folder that does not exist"),
    ("runbook", "runbook: is not a runbook"),
    ("cwd", "--cwd: is not a folder"),
])
def test_run_refuses_an_output_or_runbook_it_cannot_use_before_papermill(
        tmp_path, capsys, no_papermill, case, named):
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    output = {"symlink": tmp_path / "out.ipynb", "suffix": tmp_path / "out.txt",
              "folder": tmp_path / "nope" / "out.ipynb"}.get(case, tmp_path / "out.ipynb")
    if case == "symlink":
        output.symlink_to(target)
    name = "shift-trafic" if case == "runbook" else "shift-traffic"
    extra = ["--cwd", str(tmp_path / "nope")] if case == "cwd" else []
    assert main(["run", name, str(output), *extra]) == 2
    assert named in capsys.readouterr().err
    assert target.read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["precious.txt"] + (["out.ipynb"] if case == "symlink" else []))


@pytest.mark.lab
def test_run_writes_the_executed_notebook_and_says_how_it_ended(tmp_path, capsys):
    folder = release_fixture.write_release(tmp_path / "reports" / "reviews" / "r-1")
    output = tmp_path / "out.ipynb"
    assert main(["run", "post-rollout-analysis", str(output), "-p", "release_folder",
                 str(folder)]) == 0
    assert capsys.readouterr().out == f"runbook: {output}: post-rollout-analysis: ok\n"
    result = runbook.read_result(output)
    assert result.outcome is runbook.Outcome.OK
    assert result.parameters["release_folder"] == str(folder)
    assert stat.S_ISREG(output.lstat().st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.ipynb", "reports"]  # no temp
    assert nbformat.read(str(output), as_version=4).metadata.papermill.output_path == str(
        output)

    assert main(["run", "post-rollout-analysis", str(output), "-p", "release_folder",
                 str(tmp_path / "nope")]) == 2  # refused by the runbook: BAD_INPUT
    assert "error: BadInput: release_folder: is not a folder" in capsys.readouterr().out


# ---------------------------------------------------------------- scrubbing


def papermill_output(path: Path, parameters: dict, extra_output: str = "") -> Path:
    """A notebook as papermill writes it: parameters in its metadata and an injected cell."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["papermill"] = {"parameters": parameters, "output_path": str(path)}
    injected = nbformat.v4.new_code_cell(
        "# Parameters\n" + "\n".join(f"{k} = {v!r}" for k, v in parameters.items()) + "\n")
    injected.metadata["tags"] = ["injected-parameters"]
    work = nbformat.v4.new_code_cell("print(api_key)")
    work.outputs = [nbformat.v4.new_output("stream", name="stdout", text=extra_output)]
    nb.cells = [injected, work]
    nbformat.write(nb, str(path))
    path.chmod(0o640)
    return path


def test_scrub_removes_every_copy_of_credential_parameters_and_keeps_the_rest(tmp_path,
                                                                             capsys):
    key, password = secret(), uuid.uuid4().hex
    path = papermill_output(tmp_path / "out.ipynb", {
        "api_key": key, "prometheus_url": f"http://r:{password}@prom", "canary_weight": 25},
        extra_output=f"{key}\n")
    assert main(["scrub", str(path)]) == 0
    assert capsys.readouterr().out == f"scrubbed: {path}: api_key, prometheus_url\n"
    assert files_holding(tmp_path, key, password) == []
    nb = nbformat.read(str(path), as_version=4)  # still a valid notebook
    assert nb.metadata.papermill.parameters == {"canary_weight": 25}
    assert nb.cells[0].source == "# Parameters\ncanary_weight = 25\n"
    assert nb.cells[1].outputs[0].text == "<hidden>\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert handrun.scrub_notebook(path) == []  # nothing left to remove


def test_scrub_refuses_a_symlink_and_leaves_its_target_alone(tmp_path):
    key = secret()
    target = papermill_output(tmp_path / "real.ipynb", {"api_key": key})
    (tmp_path / "link.ipynb").symlink_to(target)
    with pytest.raises(BadInput, match="is a symbolic link or not a regular file"):
        handrun.scrub_notebook(tmp_path / "link.ipynb")
    assert key in target.read_text()


# ---------------------------------------------------------------- under the papermill command


@pytest.mark.parametrize(("arguments", "expected"), [
    (["in.ipynb", "out.ipynb", "-p", "a", "1"], "FOLDER/out.ipynb"),
    (["-p", "a", "1", "in.ipynb", "/abs/out.ipynb", "--no-progress-bar"], "/abs/out.ipynb"),
    (["in.ipynb", "out.ipynb", "--cwd", "elsewhere"], None),  # relative to a folder we lost
    (["in.ipynb", "/abs/out.ipynb", "--cwd", "elsewhere"], "/abs/out.ipynb"),
    (["in.ipynb", "-"], None), (["in.ipynb", "s3://bucket/out.ipynb"], None),
    (["in.ipynb", "out-{api_key}.ipynb"], None),
])
def test_the_output_papermill_writes_is_found_from_its_arguments(tmp_path, arguments,
                                                                 expected):
    found = handrun._output_path(arguments, tmp_path)
    assert found == (None if expected is None
                     else Path(expected.replace("FOLDER", str(tmp_path))))


def test_the_scrubbed_copy_replaces_the_null_link_once_papermill_has_exited(tmp_path):
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True, check=True)
    output, kept = tmp_path / "out.ipynb", tmp_path / ".out.ipynb.canarykit-scrubbed"
    kept.write_text("{}")
    output.symlink_to(os.devnull)
    handrun.restore_after_papermill(int(ended.stdout), output, kept, wait=5)
    assert not output.is_symlink() and output.read_text() == "{}" and not kept.exists()

    output.unlink()
    output.symlink_to(os.devnull)  # the copy is gone: the link goes, never a dangling output
    handrun.restore_after_papermill(int(ended.stdout), output, kept, wait=5)
    assert not output.exists() and not output.is_symlink()

    kept.write_text("{}")
    output.write_text("someone else's")  # not our link any more: left alone
    handrun.restore_after_papermill(int(ended.stdout), output, kept, wait=5)
    assert output.read_text() == "someone else's" and not kept.exists()


@pytest.mark.lab
def test_a_papermill_run_by_hand_with_a_credential_leaves_no_copy_on_disk(tmp_path):
    """The reproduction: `papermill runbooks/X.ipynb out.ipynb -p api_key ...` refuses the
    credential in its first cell, but papermill saved it in the output before that cell ran."""
    key, password = secret(), uuid.uuid4().hex
    env = {**os.environ}
    for variable in ("HOME", "IPYTHONDIR", "JUPYTER_RUNTIME_DIR", "TMPDIR", "XDG_CACHE_HOME",
                     "XDG_DATA_HOME", "XDG_RUNTIME_DIR", "MPLCONFIGDIR"):
        env[variable] = str(tmp_path / variable.lower())
        Path(env[variable]).mkdir()
    done = subprocess.run(
        [str(PAPERMILL), str(packaged_runbooks() / "shift-traffic.ipynb"), "out.ipynb",
         "-p", "api_key", key, "-p", "prometheus_url", f"http://reader:{password}@prom:9090",
         "--no-progress-bar"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 1
    assert "looks like a credential" in done.stderr and "canarykit removed it" in done.stderr
    assert key not in done.stdout + done.stderr and password not in done.stdout + done.stderr
    assert files_holding(tmp_path, key, password) == []  # as papermill exits

    output = tmp_path / "out.ipynb"
    deadline = time.monotonic() + 20
    while output.is_symlink() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert stat.S_ISREG(output.lstat().st_mode)  # the notebook is back, without them
    assert files_holding(tmp_path, key, password) == []
    nb = nbformat.read(str(output), as_version=4)
    assert nb.metadata.papermill.parameters == {}
    assert nb.cells[0].source.startswith("**Refused by canarykit:** the parameters `api_key`")
    assert [p.name for p in tmp_path.iterdir() if not p.is_dir()] == ["out.ipynb"]
