"""Running a runbook by hand without leaving a secret on disk.

papermill writes its output notebook, with every parameter it was given (in the notebook's
metadata and in an injected cell), before the runbook's first cell runs, and again after the
kernel is gone; a runbook refusing a credential parameter cannot stop that by itself. So:
- `canarykit runbook run NAME OUTPUT -p NAME VALUE ...` (the documented way) checks the
  parameters (declared names and types, no credential) before papermill starts, and writes
  OUTPUT through a temporary file renamed over it, never through a symbolic link: a refused
  parameter is never written anywhere.
- Under the papermill command itself (Linux), a runbook that refuses a credential
  (`runbook.check_parameters`) takes papermill's output away from it at once: OUTPUT is
  pointed at the null device for the rest of the run, and a copy without the refused
  parameters replaces it when papermill has exited (`protect_papermill_output`). Between
  papermill's first write and the refusal (the kernel's start-up) the value is on disk.
- `canarykit runbook scrub NOTEBOOK` removes credential-looking parameters from a notebook
  papermill wrote where that could not happen (papermill from Python, another platform).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import re
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from canarykit.core.errors import BadInput, CanaryKitError, ExitCode
from canarykit.core.files import write_atomically
from canarykit.core.names import looks_like_credential
from canarykit.rollout import redact, runbook
from canarykit.rollout.parameters import DECLARED, packaged_runbooks

HIDDEN = "<hidden>"
MAX_NOTEBOOK = 64 * 1024 * 1024
SCRUBBED_SUFFIX = ".canarykit-scrubbed"
RESTORE_FLAG = "--restore-after-papermill"
WAIT_FOR_PAPERMILL = 24 * 3600.0  # seconds the restorer waits for papermill to exit
TRUE, FALSE = ("true", "True", "yes", "1"), ("false", "False", "no", "0")


# ---------------------------------------------------------------- canarykit runbook run


@dataclass
class HandRun:
    """What `run_runbook` left: the output notebook, its recorded result, the run's error
    (ename, evalue) when a cell failed."""

    output: Path
    result: runbook.RunbookResult | None
    error: tuple[str, str] | None

    def exit_code(self) -> ExitCode:
        """0 done (PASS), 1 FAIL or failed, 2 a parameter refused by the runbook, 3
        INCONCLUSIVE: as the other commands say it."""
        if self.error is not None:
            return ExitCode.BAD_INPUT if self.error[0] == "BadInput" else ExitCode.FAILED
        if self.result is None or self.result.outcome is not runbook.Outcome.OK:
            return ExitCode.FAILED
        return {"FAIL": ExitCode.FAILED, "INCONCLUSIVE": ExitCode.INCONCLUSIVE}.get(
            self.result.verdict or "", ExitCode.OK)

    def summary(self) -> str:
        """One line: the outcome, the decision, or the error."""
        if self.error is not None:
            text = f"error: {self.error[0]}: {self.error[1]}"
        elif self.result is None:
            text = "error: the run recorded no result"
        else:
            text = f"{self.result.runbook}: {self.result.outcome.value}"
            if self.result.decision:
                text += f", decision {self.result.verdict}: {self.result.reason}"
        return redact.for_display(text.splitlines()[0] if text else text)[:500]


def typed_parameters(runbook_name: str, given: list[tuple[str, str]]) -> dict[str, Any]:
    """`-p NAME VALUE` pairs as the runbook's parameters, each read as its declared type
    (a str stays text even when it looks like a number). Credentials are refused first, so no
    later message can repeat one; then unknown names and values that are not their type."""
    declared = {p.name: p for p in DECLARED[check_runbook(runbook_name)]}
    raw = dict(given)
    runbook.check_parameters(raw)
    typed = {}
    for name, text in raw.items():
        if name not in declared:
            raise BadInput(redact.shown(name), "-p", f"is not a parameter of the {runbook_name} "
                           f"runbook (parameters: {', '.join(declared)})")
        typed[name] = _typed(name, text, declared[name].type)
    return typed


def _typed(name: str, text: str, kind: str) -> Any:
    if kind == "str":
        return text
    if kind == "bool":
        if text in TRUE or text in FALSE:
            return text in TRUE
        raise BadInput(name, redact.shown(text), "must be true or false")
    if kind == "int":
        if re.fullmatch(r"[+-]?[0-9]{1,18}", text.strip()):
            return int(text)
        raise BadInput(name, redact.shown(text), "must be a whole number")
    try:
        number = float(text)
    except ValueError:
        number = math.nan
    if not math.isfinite(number):
        raise BadInput(name, redact.shown(text), "must be a number")
    return number


def check_runbook(name: str) -> str:
    """`name` if it is one of the packaged runbooks."""
    if name not in DECLARED:
        raise BadInput("runbook", redact.shown(name),
                       f"is not a runbook (runbooks: {', '.join(DECLARED)})")
    return name


def check_output_notebook(output: Path) -> Path:
    """Where `run_runbook` may write: a .ipynb in an existing folder, not a symbolic link or
    anything but a regular file."""
    from canarykit.rollout.release import check_output

    if output.suffix != ".ipynb":
        raise BadInput("OUTPUT", redact.shown(str(output)), "must end in .ipynb")
    if not output.parent.is_dir():
        raise BadInput("OUTPUT", redact.shown(str(output)), "is in a folder that does not exist")
    return check_output(output, "OUTPUT")


def run_runbook(runbook_name: str, output: Path, parameters: dict[str, Any], *,
                kernel: str | None = None, cwd: str | None = None) -> HandRun:
    """Execute the packaged runbook into `output` with papermill, after checking `parameters`
    (nothing is written when one is refused). papermill writes a temporary file beside
    `output`, renamed over it when the run ends, failed or not."""
    check_runbook(runbook_name)
    runbook.check_parameters(parameters)
    output = check_output_notebook(Path(output))
    if cwd is not None and not Path(cwd).is_dir():
        raise BadInput("--cwd", redact.shown(cwd), "is not a folder")
    papermill = runbook.import_papermill()
    descriptor, temporary = tempfile.mkstemp(dir=output.parent, prefix=f".{output.name}.",
                                             suffix=".ipynb")
    os.close(descriptor)
    error = None
    try:
        try:
            papermill.execute_notebook(
                str(packaged_runbooks() / f"{runbook_name}.ipynb"), temporary,
                parameters=parameters, kernel_name=kernel, cwd=cwd, progress_bar=False,
                log_output=False)
        except papermill.PapermillExecutionError as exc:
            error = (str(exc.ename), redact.strip_userinfo(str(exc.evalue)))
        except Exception as exc:  # noqa: BLE001 - no such kernel, it died, ...: one line
            raise CanaryKitError(f"runbook {runbook_name} could not run: "
                                 f"{runbook.error_text(exc)}") from None
        _name_output(Path(temporary), output)
        os.chmod(temporary, 0o666 & ~_umask())
        os.replace(temporary, output)
    finally:
        Path(temporary).unlink(missing_ok=True)
    result, left = runbook.read_notebook(output)
    if error is None and left is not None and result is None:
        name, _, value = left.partition(": ")
        error = (name, value)
    return HandRun(output, result, error)


def _name_output(written: Path, output: Path) -> None:
    """papermill recorded the temporary file as its output path; record OUTPUT instead
    (written as nbformat writes a notebook)."""
    try:
        notebook = json.loads(written.read_text(encoding="utf-8"))
        notebook["metadata"]["papermill"]["output_path"] = str(output)
    except (OSError, ValueError, KeyError, TypeError):
        return
    written.write_text(json.dumps(notebook, indent=1, sort_keys=True, ensure_ascii=False)
                       + "\n", encoding="utf-8")


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# ---------------------------------------------------------------- scrubbing a papermill output


def scrubbed(notebook: dict[str, Any], refused: dict[str, Any]) -> str:
    """The notebook's text without the `refused` parameters: gone from papermill's metadata
    and from the injected-parameters cell, and every string of their values replaced by
    <hidden> wherever else it shows. CanaryKitError if a value still shows."""
    notebook = copy.deepcopy(notebook)
    metadata = notebook.get("metadata") if isinstance(notebook.get("metadata"), dict) else {}
    papermill = metadata.get("papermill") if isinstance(metadata.get("papermill"), dict) else {}
    if isinstance(papermill.get("parameters"), dict):
        papermill["parameters"] = {k: v for k, v in papermill["parameters"].items()
                                   if k not in refused}
    assignment = re.compile(r"\s*(?:" + "|".join(re.escape(str(n)) for n in refused) + r")\s*=")
    cells = notebook.get("cells") if isinstance(notebook.get("cells"), list) else []
    for cell in cells:
        meta = cell.get("metadata") if isinstance(cell, dict) else None
        tags = meta.get("tags") if isinstance(meta, dict) else None
        if not isinstance(tags, list) or "injected-parameters" not in tags:
            continue
        source = cell.get("source") or ""
        lines = source if isinstance(source, list) else str(source).splitlines(keepends=True)
        kept = [line for line in lines if not assignment.match(str(line))]
        cell["source"] = kept if isinstance(source, list) else "".join(kept)
    secrets = sorted({s for name, value in refused.items() for s in _strings(value)
                      + ([str(name)] if looks_like_credential(str(name)) else [])},
                     key=len, reverse=True)
    notebook = _replaced(notebook, secrets)
    text = json.dumps(notebook, indent=1, ensure_ascii=False) + "\n"
    if any(form in text for secret in secrets for form in _forms(secret)):
        raise CanaryKitError("a refused parameter could not be removed from the notebook")
    return text


def _names(refused: dict[str, Any]) -> list[str]:
    """The refused parameters' names, as a message may show them."""
    return sorted(HIDDEN if looks_like_credential(str(n)) else str(n) for n in refused)


def _strings(value: Any) -> list[str]:
    """The texts a parameter's value is made of (long enough to be told from other text)."""
    if isinstance(value, dict):
        return [s for key, item in value.items() for s in [*_strings(key), *_strings(item)]]
    if isinstance(value, list | tuple):
        return [s for item in value for s in _strings(item)]
    if isinstance(value, bool) or value is None:
        return []
    text = str(value)
    return [text] if len(text) >= 4 else []


def _forms(secret: str) -> set[str]:
    """How a text may be written inside a notebook's JSON: as is, JSON- or repr-escaped."""
    return {secret, json.dumps(secret)[1:-1], json.dumps(secret, ensure_ascii=False)[1:-1],
            repr(secret)[1:-1]}


def _replaced(value: Any, secrets: list[str]) -> Any:
    if isinstance(value, str):
        for secret in secrets:
            for form in _forms(secret):
                value = value.replace(form, HIDDEN)
        return value
    if isinstance(value, dict):
        return {_replaced(k, secrets): _replaced(v, secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [_replaced(item, secrets) for item in value]
    return value


def _read_notebook_json(path: Path) -> dict[str, Any]:
    """A notebook file's JSON; a symbolic link or anything but a regular file is refused."""
    try:
        info = os.lstat(path)
    except OSError as exc:
        raise BadInput("NOTEBOOK", redact.shown(str(path)), f"cannot be read ({exc.strerror})"
                       ) from None
    if not stat.S_ISREG(info.st_mode):
        raise BadInput("NOTEBOOK", redact.shown(str(path)),
                       "is a symbolic link or not a regular file: not touched")
    if info.st_size > MAX_NOTEBOOK:
        raise BadInput("NOTEBOOK", redact.shown(str(path)), "is too large for a notebook")
    try:
        notebook = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        notebook = None
    if not isinstance(notebook, dict):
        raise BadInput("NOTEBOOK", redact.shown(str(path)), "is not a notebook (JSON object)")
    return notebook


def scrub_notebook(path: Path) -> list[str]:
    """Remove every parameter that is or holds a credential from a notebook papermill wrote
    (rewritten atomically, its mode kept); the names removed."""
    path = Path(path)
    notebook = _read_notebook_json(path)
    papermill = (notebook.get("metadata") or {}).get("papermill") or {}
    given = papermill.get("parameters") if isinstance(papermill, dict) else None
    found = runbook.credential_parameters(given) if isinstance(given, dict) else []
    if not found:
        return []
    refused = {name: given[name] for name, _, _ in found}
    write_atomically(path, scrubbed(notebook, refused), stat.S_IMODE(os.lstat(path).st_mode))
    return _names(refused)


# ---------------------------------------------------------------- under the papermill command


def protect_papermill_output(refused: dict[str, Any]) -> str:
    """Called by a runbook refusing `refused` (name -> value) inside a kernel: when the papermill
    command started it, keep the values out of papermill's output notebook (see the module
    docstring). A note for the refusal's message, saying what happened to that copy."""
    found = _papermill_command()
    output = _output_path(*found[1:]) if found else None
    if found is None or output is None:
        return runbook.handrun_hint()
    try:
        notebook = _read_notebook_json(output)
        papermill = notebook["metadata"]["papermill"]
        saved = papermill["parameters"]
        if not all(saved.get(name) == value for name, value in refused.items()):
            return runbook.handrun_hint()
        notebook["cells"] = [{
            "cell_type": "markdown", "id": "canarykit-refused", "metadata": {},
            "source": "**Refused by canarykit:** the parameters "
                      f"{', '.join(f'`{n}`' for n in _names(refused))} looked like credentials; "
                      "they were removed from this notebook. Run runbooks with "
                      "`canarykit runbook run`.",
        }, *notebook["cells"]]
        text = scrubbed(notebook, refused)
    except (CanaryKitError, KeyError, TypeError, AttributeError):
        return runbook.handrun_hint()
    kept = output.with_name(f".{output.name}{SCRUBBED_SUFFIX}")
    write_atomically(kept, text, stat.S_IMODE(os.lstat(output).st_mode))
    link = output.with_name(f".{output.name}.{os.getpid()}.null")
    link.unlink(missing_ok=True)
    os.symlink(os.devnull, link)
    os.replace(link, output)  # papermill's later writes now go nowhere
    subprocess.Popen(  # noqa: S603 - our own module, no shell
        [sys.executable, "-m", "canarykit.rollout.handrun", RESTORE_FLAG, str(found[0]),
         str(output), str(kept)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True, close_fds=True)
    return (f"; papermill had already saved it in {output.name}: canarykit removed it there "
            "(the notebook comes back without it when papermill exits)")


def _papermill_command() -> tuple[int, list[str], Path] | None:
    """(pid, arguments, working folder) of the papermill command that started this kernel,
    if it did (read from /proc: Linux only)."""
    pid = os.getppid()
    try:
        argv = [a.decode("utf-8", "surrogateescape") for a in
                Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1]]
        folder = Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        return None
    names = [Path(arg).name.removesuffix(".exe") for arg in argv[:3]]
    if names[:1] == ["papermill"]:
        return pid, argv[1:], folder
    if len(names) > 1 and names[0].startswith("python"):
        if names[1] == "papermill":
            return pid, argv[2:], folder
        if names[1:3] == ["-m", "papermill"]:
            return pid, argv[3:], folder
    return None


def _output_path(arguments: list[str], folder: Path) -> Path | None:
    """The output notebook those papermill arguments name, as papermill parses them; None when
    it is not a local file this process can find (stdout, a URL, a templated name, a relative
    path under --cwd)."""
    runbook.import_papermill()
    from papermill.cli import papermill as command

    try:
        context = command.make_context("papermill", list(arguments), resilient_parsing=True)
    except Exception:  # noqa: BLE001 - not a papermill command line we understand
        return None
    output = context.params.get("output_path") or ""
    if output in ("", "-") or "://" in output or "{" in output:
        return None
    if not os.path.isabs(output) and context.params.get("cwd"):
        return None
    return folder / output


def restore_after_papermill(pid: int, output: Path, kept: Path,
                            wait: float = WAIT_FOR_PAPERMILL) -> None:
    """Once papermill (`pid`) has exited, put the scrubbed copy back in place of the link to
    the null device (left alone if something else is there by then)."""
    deadline = time.monotonic() + wait
    while _running(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _running(pid):
        return
    if not (output.is_symlink() and os.readlink(output) == os.devnull):
        kept.unlink(missing_ok=True)
    elif kept.is_file():
        os.replace(kept, output)
    else:
        output.unlink()


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


# ---------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`canarykit runbook run RUNBOOK OUTPUT [-p NAME VALUE]...`, `canarykit runbook scrub`."""
    commands = parser.add_subparsers(dest="runbook_command", required=True, metavar="COMMAND")
    run_ = commands.add_parser(
        "run", help="run a packaged runbook with papermill, its parameters checked first",
        description="Run a packaged runbook into OUTPUT. Parameters are checked (declared "
                    "names and types, no credential) before anything is written.")
    run_.add_argument("runbook", metavar="RUNBOOK", help=f"one of: {', '.join(DECLARED)}")
    run_.add_argument("output", type=Path, metavar="OUTPUT", help="the executed notebook")
    run_.add_argument("-p", "--parameter", nargs=2, action="append", default=[],
                      metavar=("NAME", "VALUE"), help="a parameter, read as its declared type")
    run_.add_argument("--kernel", default=None, help="kernel name (default: the notebook's)")
    run_.add_argument("--cwd", default=None, help="the kernel's working folder")
    scrub = commands.add_parser(
        "scrub", help="remove credential parameters from notebooks papermill wrote")
    scrub.add_argument("notebooks", nargs="+", type=Path, metavar="NOTEBOOK")


def run(args: argparse.Namespace) -> int:
    """`canarykit runbook run|scrub`."""
    if args.runbook_command == "scrub":
        for path in args.notebooks:
            removed = scrub_notebook(path)
            print(f"scrubbed: {path}: " + (", ".join(removed) if removed
                                           else "no credential parameter"))
        return ExitCode.OK
    parameters = typed_parameters(args.runbook, [tuple(p) for p in args.parameter])
    done = run_runbook(args.runbook, args.output, parameters, kernel=args.kernel,
                       cwd=args.cwd)
    print(f"runbook: {done.output}: {done.summary()}")
    return done.exit_code()


if __name__ == "__main__":
    if sys.argv[1:2] == [RESTORE_FLAG] and len(sys.argv) == 5:
        restore_after_papermill(int(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]))
