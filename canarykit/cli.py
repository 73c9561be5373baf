"""The `canarykit` command: argument parsing and dispatch; the work happens in the modules."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from canarykit import __version__
from canarykit.errors import BadInput, CanaryKitError

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


def _percent(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be a whole number from 0 to 100 (got {text!r})"
        ) from None
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"must be a whole number from 0 to 100 (got {value})")
    return value


def _add_cluster_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("service", metavar="SERVICE", help="the service (VirtualService host)")
    parser.add_argument(
        "-n", "--namespace", help="namespace (default: the context's, else default)"
    )
    parser.add_argument("--context", help="kubeconfig context (default: the current one)")
    parser.add_argument(
        "--kubeconfig", help="kubeconfig file (default: $KUBECONFIG or ~/.kube/config)"
    )
    parser.add_argument(
        "--audit-log",
        type=Path,
        help="audit log (default: $CANARYKIT_AUDIT_LOG or reports/audit.jsonl)",
    )
    parser.add_argument("--output", choices=("text", "json"), default="text")


def _module_command(module: str) -> Any:
    """Subcommands implemented by a module's add_arguments/run pair, imported only when used."""
    return importlib.import_module(f"canarykit.{module}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="canarykit", description="Istio canary releases as auditable, scheduled notebooks."
    )
    parser.add_argument("--version", action="version", version=f"canarykit {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    validate = commands.add_parser(
        "validate", help="check Istio YAML files offline, like istioctl analyze"
    )
    _module_command("validate").add_arguments(validate)
    validate.set_defaults(module="validate")

    analyze = commands.add_parser("analyze", help="judge the canary against the stable version")
    _module_command("analysis").add_arguments(analyze)
    analyze.set_defaults(module="analysis")

    status = commands.add_parser("status", help="show routes, weights, subsets and the rollout")
    _add_cluster_arguments(status)
    status.set_defaults(handler=run_status)

    weight = commands.add_parser("weight", help="set the canary's share of traffic")
    _add_cluster_arguments(weight)
    weight.add_argument(
        "--canary", type=_percent, required=True, metavar="N", help="canary weight 0..100"
    )
    weight.add_argument("--stable-subset", default="v1", help="stable subset (default v1)")
    weight.add_argument("--canary-subset", default="v2", help="canary subset (default v2)")
    weight.add_argument("--route", help="name of the http route holding the split")
    weight.add_argument("--dry-run", action="store_true", help="ask the server, change nothing")
    weight.set_defaults(handler=run_weight)

    rollback = commands.add_parser(
        "rollback", help="restore the traffic as it was before the rollout"
    )
    _add_cluster_arguments(rollback)
    rollback.add_argument("--dry-run", action="store_true", help="ask the server, change nothing")
    rollback.set_defaults(handler=run_rollback)

    audit = commands.add_parser("audit", help="audit log tools")
    audit_commands = audit.add_subparsers(dest="audit_command", required=True, metavar="COMMAND")
    verify = audit_commands.add_parser("verify", help="check the hash chain of an audit log")
    verify.add_argument(
        "path", type=Path, metavar="PATH", help="audit log file, or a folder holding audit.jsonl"
    )
    verify.set_defaults(handler=run_audit_verify)

    demo = commands.add_parser(
        "demo", help="the main job: a rollout rehearsal against the local lab"
    )
    _module_command("demo").add_arguments(demo)
    demo.set_defaults(module="demo")

    rollout = commands.add_parser(
        "rollout", help="run a rollout plan: run, step, status, abort, promote"
    )
    _module_command("rollout").add_arguments(rollout)
    rollout.set_defaults(module="rollout")

    report = commands.add_parser("report", help="release reports")
    report_commands = report.add_subparsers(dest="report_command", required=True, metavar="COMMAND")
    build = report_commands.add_parser("build", help="build the HTML report of a release folder")
    _module_command("report").add_arguments(build)
    build.set_defaults(module="report")

    lab = commands.add_parser("lab", help="the local lab")
    lab_commands = lab.add_subparsers(dest="lab_command", required=True, metavar="COMMAND")
    apiserver = lab_commands.add_parser("apiserver", help="run the local Kubernetes API server")
    _module_command("apiserver").add_arguments(apiserver)
    apiserver.set_defaults(module="apiserver")
    lab_module = _module_command("lab")
    for name, text in (
        ("up", "start the lab: API server, control plane, Envoy, workloads, Prometheus, load"),
        ("down", "stop every process of the lab"),
        ("status", "show the lab's URLs, kubeconfig and each part's PID and health"),
    ):
        part = lab_commands.add_parser(name, help=text)
        getattr(lab_module, f"add_{name}_arguments")(part)
        part.set_defaults(module="lab")
    return parser


def _connect(args: argparse.Namespace):
    from canarykit import cluster

    return cluster.connect(args.kubeconfig, args.context, args.namespace)


def _print_changes(applied: list[Any], args: argparse.Namespace) -> None:
    if args.output == "json":
        print(json.dumps([a.to_dict() for a in applied], indent=2))
        return
    for item in applied:
        ref = item.change.to_dict().get("target", "")
        if not item.change.changed:
            print(f"{ref}: already as asked, nothing to change")
            continue
        print(item.change.diff())
        verb = "would change (server dry run, nothing written)" if item.dry_run else "changed"
        print(f"{ref}: {verb}")


def run_status(args: argparse.Namespace) -> int:
    from canarykit import cluster

    report = cluster.status(_connect(args), args.service)
    if args.output == "json":
        print(json.dumps(report, indent=2))
        return EXIT_OK
    print(f"service {report['service']} in {report['namespace']} ({report['server']})")
    print(f"VirtualService {report['virtualService']}  DestinationRule {report['destinationRule']}")
    print("subsets: " + ", ".join(f"{s['name']} {s['labels']}" for s in report["subsets"]))
    for route in report["routes"]:
        split = ", ".join(
            f"{d['subset'] or '-'}={d['weight'] if d['weight'] is not None else 100}"
            for d in route["destinations"]
        )
        match = " (match)" if route["match"] else ""
        print(f"  http[{route['index']}] {route['name'] or '(unnamed)'}{match}: {split}")
    rollout = report["rollout"]
    if rollout:
        print(
            f"rollout {rollout['release']}: {rollout['canary']} over {rollout['stable']}, "
            f"phase {rollout['phase']}, step {rollout['step']}, since {rollout['started_at']}"
        )
    else:
        print("no rollout in progress")
    return EXIT_OK


def run_weight(args: argparse.Namespace) -> int:
    from canarykit import cluster

    applied = cluster.set_weight(
        _connect(args),
        args.service,
        args.canary,
        stable=args.stable_subset,
        canary=args.canary_subset,
        route=args.route,
        dry_run=args.dry_run,
        audit_log=args.audit_log,
    )
    _print_changes([applied], args)
    return EXIT_OK


def run_rollback(args: argparse.Namespace) -> int:
    from canarykit import cluster

    applied = cluster.rollback(
        _connect(args), args.service, dry_run=args.dry_run, audit_log=args.audit_log
    )
    _print_changes(applied, args)
    return EXIT_OK


def run_audit_verify(args: argparse.Namespace) -> int:
    from canarykit import audit

    path = args.path / "audit.jsonl" if args.path.is_dir() else args.path
    check = audit.verify_chain(path)
    if check.ok:
        print(f"{path}: audit chain intact, {check.records} records, head {check.head[:16]}")
        return EXIT_OK
    print(f"{path}: audit chain BROKEN: {check.problem}", file=sys.stderr)
    return EXIT_FAILED


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if hasattr(args, "module"):
            return _module_command(args.module).run(args)
        return args.handler(args)
    except BadInput as exc:
        print(f"canarykit: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except CanaryKitError as exc:
        print(f"canarykit: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130
