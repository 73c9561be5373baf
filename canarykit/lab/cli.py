"""`canarykit lab up | down | status | apiserver`: the lab's own commands."""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable
from types import ModuleType
from typing import Any

from canarykit.core.errors import CanaryKitError

LAB_COMMANDS = {
    "up": "start the lab: API server, control plane, Envoy, workloads, Prometheus, load",
    "down": "stop every process of the lab",
    "status": "show the lab's URLs, kubeconfig and each part's PID and health",
    "apiserver": "run the local Kubernetes API server",
}
APISERVER = "canarykit.lab.apiserver"  # needs jsonpatch, from the [lab] extra


def lab_module(name: str) -> ModuleType:
    """Import a lab module; a missing [lab] dependency is one clear error, not a traceback."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        if not exc.name or exc.name.split(".")[0] == "canarykit":
            raise
        raise CanaryKitError("the lab needs canarykit[lab]: pip install 'canarykit[lab]' "
                             f"(missing: {exc.name})") from None


class _DeferredParser(argparse.ArgumentParser):
    """A subcommand parser whose arguments are added only when it parses, so `lab status`
    never imports what `lab apiserver` alone needs."""

    setup: Callable[[argparse.ArgumentParser], None] | None = None

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        if self.setup is not None:
            setup, self.setup = self.setup, None
            setup(self)
        return super().parse_known_args(args, namespace)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from canarykit.lab import processes

    commands = parser.add_subparsers(dest="lab_command", required=True, metavar="COMMAND",
                                     parser_class=_DeferredParser)
    for name, text in LAB_COMMANDS.items():
        part = commands.add_parser(name, help=text, description=text)
        if name == "apiserver":
            part.setup = lambda p: lab_module(APISERVER).add_arguments(p)
        else:
            getattr(processes, f"add_{name}_arguments")(part)


def run(args: argparse.Namespace) -> int:
    from canarykit.lab import processes

    if args.lab_command == "apiserver":
        return lab_module(APISERVER).run(args)
    if args.lab_command == "up":
        lab_module(APISERVER)  # started as a process: refuse before starting anything
    return processes.run(args)
