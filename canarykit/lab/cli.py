"""`canarykit lab up | down | status | apiserver`: the lab's own commands."""

from __future__ import annotations

import argparse

LAB_COMMANDS = {
    "up": "start the lab: API server, control plane, Envoy, workloads, Prometheus, load",
    "down": "stop every process of the lab",
    "status": "show the lab's URLs, kubeconfig and each part's PID and health",
    "apiserver": "run the local Kubernetes API server",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from canarykit.lab import apiserver, processes

    commands = parser.add_subparsers(dest="lab_command", required=True, metavar="COMMAND")
    for name, text in LAB_COMMANDS.items():
        part = commands.add_parser(name, help=text, description=text)
        if name == "apiserver":
            apiserver.add_arguments(part)
        else:
            getattr(processes, f"add_{name}_arguments")(part)


def run(args: argparse.Namespace) -> int:
    from canarykit.lab import apiserver, processes

    if args.lab_command == "apiserver":
        return apiserver.run(args)
    return processes.run(args)
