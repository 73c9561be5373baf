"""What every lab process shares: its `__main__` (parse, run, stop cleanly on a signal) and
the client of the small JSON control API the workload and the load generator serve."""

from __future__ import annotations

import argparse
import json
import signal
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from canarykit.core.errors import BadInput, CanaryKitError


def stop_on_signals(stop: Callable[[], None] | None = None) -> threading.Event:
    """An event set on SIGTERM or SIGINT (and `stop` called), so `lab down` ends us cleanly."""
    event = threading.Event()

    def handle(*_: object) -> None:
        event.set()
        if stop is not None:
            stop()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, handle)
    return event


def main(module: str, doc: str | None,
         add_arguments: Callable[[argparse.ArgumentParser], None],
         run: Callable[[argparse.Namespace], int]) -> None:
    """`python -m canarykit.lab.MODULE ...`: the module's own arguments and exit code."""
    cli = argparse.ArgumentParser(prog=f"python -m {module}", description=doc,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(cli)
    raise SystemExit(run(cli.parse_args()))


def call_json(who: str, url: str, path: str, method: str = "GET", body: Any = None,
              timeout: float = 30.0) -> dict[str, Any]:
    """One request to a lab process's control API; its refusals come back as our errors (a
    400 naming a field is that field's BadInput)."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url.rstrip("/") + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as err:
        try:
            answer = json.loads(err.read())
        except ValueError:
            answer = {}
        if err.code == 400 and "field" in answer:
            raise BadInput(answer["field"], answer.get("value"),
                           answer.get("problem", "refused")) from None
        raise CanaryKitError(f"{who} {url} answered {err.code}: "
                             f"{answer.get('error', err.reason)}") from None
    except OSError as err:
        raise CanaryKitError(f"{who} {url} could not be reached: {err}") from None
