"""What every lab process does at its `__main__`: parse, run, stop cleanly on a signal."""

from __future__ import annotations

import argparse
import signal
import threading
from collections.abc import Callable


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
