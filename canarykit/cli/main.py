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
from canarykit.core.errors import CanaryKitError, ExitCode, exit_code_for


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


def _add_connection_arguments(parser: argparse.ArgumentParser,
                              timeout_flag: str = "--timeout") -> None:
    parser.add_argument("--context", help="kubeconfig context (default: the current one)")
    parser.add_argument(
        "--kubeconfig", help="kubeconfig file (default: $KUBECONFIG or ~/.kube/config)"
    )
    parser.add_argument(
        timeout_flag, dest="timeout", metavar="SECONDS",
        help="seconds each request to the API server may take (default: "
             "$CANARYKIT_KUBE_TIMEOUT, else 30)",
    )


def _add_cluster_arguments(parser: argparse.ArgumentParser,
                           timeout_flag: str = "--timeout") -> None:
    parser.add_argument("service", metavar="SERVICE",
                        help="the service (VirtualService host): NAME, or its FQDN "
                             "NAME.NAMESPACE.svc.cluster.local")
    parser.add_argument(
        "-n", "--namespace",
        help="namespace (default: the one the service's FQDN names, else the context's, "
             "else default)"
    )
    _add_connection_arguments(parser, timeout_flag)
    parser.add_argument(
        "--audit-log",
        type=Path,
        help="audit log (default: $CANARYKIT_AUDIT_LOG or reports/audit.jsonl)",
    )
    parser.add_argument("--output", choices=("text", "json"), default="text")


# Commands whose arguments and work live in a module: (module, help). The module is imported
# only when its command is the one being run, so `--help` and `--version` load nothing heavy.
MODULE_COMMANDS: dict[str, tuple[str, str]] = {
    "validate": ("canarykit.mesh.validate",
                 "check Istio YAML files offline, like istioctl analyze"),
    "analyze": ("canarykit.analysis.step", "judge the canary against the stable version"),
    "replay": ("canarykit.analysis.replay",
               "judge recorded per-interval counts offline, as if checking at every row"),
    "rollout": ("canarykit.rollout.driver",
                "run a rollout plan: run, step, status, abort, promote"),
    "report": ("canarykit.rollout.report", "release reports: build"),
    "notify": ("canarykit.notify.cli", "notifications: send a test to every channel of a plan"),
    "runbook": ("canarykit.rollout.handrun", "run a packaged runbook by hand (parameters "
                "checked before anything is written); scrub papermill outputs"),
    "deploy": ("canarykit.deploy.manifests",
               "render the manifests that run a plan on the cluster (CronJob or Argo "
               "Workflows, least privilege)"),
}
# Optional parts (the lab) offer commands the same way through this entry-point group, so the
# product never imports them.
COMMANDS_ENTRY_POINT = "canarykit.commands"
CLUSTER_COMMANDS: dict[str, str] = {
    "status": "show routes, weights, subsets and the rollout",
    "weight": "set the canary's share of traffic",
    "rollback": "restore the traffic as it was before the rollout",
    "policy": "set or clear timeouts, retries, fault injection, session affinity, outlier "
              "detection and connection pools",
    "route": "send internal users (a header, a cookie, a query parameter, one client "
             "workload) to the canary, ahead of the split",
    "mirror": "mirror (shadow) a share of the traffic to the canary, or stop",
    "switch": "blue-green: send all of the traffic to one version",
}
TRAFFIC_COMMANDS = ("route", "mirror", "switch")  # one router operation each, like weight
ORDER = ("validate", "analyze", "replay", "status", "weight", "route", "mirror", "switch",
         "policy", "rollback", "audit", "rollout",
         "runbook", "report", "notify", "deploy")
ALL = "*"


def plugin_commands() -> dict[str, tuple[str, str]]:
    """Commands of installed optional parts: name -> (module, help). A part that fails to load
    is skipped with a warning, so it cannot break every other command."""
    from importlib.metadata import entry_points

    found: dict[str, tuple[str, str]] = {}
    for entry in entry_points(group=COMMANDS_ENTRY_POINT):
        try:
            commands = dict(entry.load())
        except Exception as exc:  # a broken or half-installed plugin, whatever it raises
            problem = " ".join(str(exc).split()) or type(exc).__name__
            print(f"canarykit: warning: skipping the commands of {entry.name} ({entry.value}): "
                  f"{problem}", file=sys.stderr)
            continue
        found.update(commands)
    return found


def _command_of(argv: Sequence[str]) -> str | None:
    """The subcommand named on the command line (its first word), if any."""
    return argv[0] if argv and not argv[0].startswith("-") else None


def _add_policy_arguments(parser: argparse.ArgumentParser) -> None:
    from canarykit.mesh import policy

    parser.add_argument("--route", help="VirtualService http route for timeout, retries and "
                        "fault (default: the canary route)")
    parser.add_argument("--subset", help="DestinationRule subset for affinity, outlier and "
                        "pool (default: the top-level trafficPolicy)")
    parser.add_argument("--stable-subset", default="v1",
                        help="stable subset, when no rollout is in progress (default v1)")
    parser.add_argument("--canary-subset", default="v2",
                        help="canary subset, when no rollout is in progress (default v2)")
    for group in policy.GROUPS:
        section = parser.add_argument_group(group)
        for setting in policy.SETTINGS:
            if setting.group == group:
                section.add_argument(setting.flag, dest=f"policy_{setting.name}",
                                     metavar=setting.type.upper(), help=setting.help)
    parser.add_argument("--clear", action="append", metavar="GROUP",
                        help="remove a group: " + "|".join(policy.GROUPS) + " (repeat, or "
                        "comma-separated)")


def _add_cluster_command(name: str, parser: argparse.ArgumentParser) -> None:
    _add_cluster_arguments(parser, "--kube-timeout" if name == "policy" else "--timeout")
    parser.add_argument("--router", choices=("istio", "gateway-api"), default="",
                        help="what routes the service (default: detected)")
    if name == "weight":
        parser.add_argument(
            "--canary", type=_percent, required=True, metavar="N", help="canary weight 0..100"
        )
        parser.add_argument("--stable-subset", default="v1", help="stable subset (default v1)")
        parser.add_argument("--canary-subset", default="v2", help="canary subset (default v2)")
        parser.add_argument("--route", help="name of the http route holding the split")
    if name == "policy":
        _add_policy_arguments(parser)
    if name in TRAFFIC_COMMANDS:
        _add_traffic_arguments(name, parser)
    if name in ("weight", "rollback", "policy", *TRAFFIC_COMMANDS):
        parser.add_argument(
            "--dry-run", action="store_true", help="ask the server, change nothing"
        )
    parser.set_defaults(handler={"status": run_status, "weight": run_weight,
                                 "rollback": run_rollback, "policy": run_policy,
                                 **dict.fromkeys(TRAFFIC_COMMANDS, run_traffic)}[name])


def _add_traffic_arguments(name: str, parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--stable-subset", default="v1",
                        help="stable version, when no rollout is in progress (default v1)")
    parser.add_argument("--canary-subset", default="v2",
                        help="canary version, when no rollout is in progress (default v2)")
    parser.add_argument("--routes", default="", metavar="NAME[,NAME]",
                        help="routes that move together (default: the canary route)")
    if name == "route":
        parser.add_argument("--header", metavar="NAME=VALUE",
                            help="requests with this header (a JWT claim at a gateway: "
                                 "@request.auth.claims.NAME=VALUE)")
        from canarykit.mesh.istio import STRING_MATCH_KINDS

        parser.add_argument("--header-match", default="exact", choices=STRING_MATCH_KINDS,
                            help="how the header (or query) value matches (default exact)")
        parser.add_argument("--cookie", metavar="NAME[=VALUE]",
                            help="requests with this cookie (any value when none is given)")
        parser.add_argument("--query", metavar="NAME=VALUE",
                            help="requests with this query parameter")
        parser.add_argument("--source-labels", default="", metavar="KEY=VALUE[,KEY=VALUE]",
                            help="calls from the client workload with these labels")
    elif name == "mirror":
        chosen = parser.add_mutually_exclusive_group(required=True)
        chosen.add_argument("--percent", type=float, metavar="P",
                            help="share of the requests mirrored to the canary, 0..100")
        chosen.add_argument("--off", action="store_true", help="stop mirroring")
    else:
        parser.add_argument("--to", required=True, metavar="VERSION",
                            help="the version (subset or backend) that gets all traffic")


def _add_audit_command(parser: argparse.ArgumentParser) -> None:
    audit_commands = parser.add_subparsers(dest="audit_command", required=True, metavar="COMMAND")
    verify = audit_commands.add_parser(
        "verify", help="check the hash chain of an audit log, and against the cluster",
        description="Check every record's hash and link (and HMAC, when "
                    "$CANARYKIT_AUDIT_HMAC_KEY is set) and every unfinished change. With "
                    "--cluster (implied by --kubeconfig/--context), also check that each "
                    "object the log changed carries the log's newest change to it as its "
                    "audit head: records cut from the end or a rewritten chain are found.")
    verify.add_argument(
        "path", metavar="PATH",
        help="audit log file, or a folder holding audit.jsonl (a release folder: its plan "
             "names the cluster), or a release folder's URL in object storage")
    verify.add_argument("--cluster", action="store_true",
                        help="check the log against the cluster (the release folder's plan's, "
                             "else as kubectl)")
    verify.add_argument("--reconcile", action="store_true",
                        help="with the cluster: first record the outcome of unfinished "
                             "changes the cluster answers for")
    _add_connection_arguments(verify)
    verify.add_argument("--output", choices=("text", "json"), default="text")
    verify.set_defaults(handler=run_audit_verify)


def build_parser(command: str | None = ALL) -> argparse.ArgumentParser:
    """The parser; only `command`'s arguments are set up (ALL: every command's)."""
    parser = argparse.ArgumentParser(
        prog="canarykit", description="Istio canary releases as auditable, scheduled notebooks."
    )
    parser.add_argument("--version", action="version", version=f"canarykit {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    modules = {**MODULE_COMMANDS, **plugin_commands()}
    for name in (*ORDER, *sorted(set(modules) - set(ORDER))):
        if name in modules:
            module, text = modules[name]
        else:
            text = CLUSTER_COMMANDS.get(name, "audit log tools")
        sub = commands.add_parser(name, help=text, description=text)
        if command not in (ALL, name):
            continue
        if name in modules:
            importlib.import_module(module).add_arguments(sub)
            sub.set_defaults(module=module)
        elif name == "audit":
            _add_audit_command(sub)
        else:
            _add_cluster_command(name, sub)
    return parser


def _connect(args: argparse.Namespace):
    """The cluster, in the namespace `-n` or the service's FQDN names (one refusal when they
    differ); `args.service` keeps the host as given, which the lookups match as an FQDN."""
    from canarykit.cluster import client as cluster
    from canarykit.core import names

    args.service = names.check_service_host("SERVICE", args.service.removesuffix("."))
    namespace = names.service_namespace("SERVICE", args.service, args.namespace, "--namespace")
    return cluster.connect(args.kubeconfig, args.context, namespace, args.timeout)


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


def _router(args: argparse.Namespace, kube: Any, stable: str = "v1", canary: str = "v2") -> Any:
    from canarykit.routers import open_router

    return open_router(kube, args.service, stable, canary, args.router)


def run_status(args: argparse.Namespace) -> int:
    report = _router(args, _connect(args)).status()
    if args.output == "json":
        print(json.dumps(report.to_dict(), indent=2))
        return ExitCode.OK
    print(f"service {report.service} in {report.namespace} ({report.server})")
    if report.router == "istio":
        print(f"VirtualService {report.virtual_service}  "
              f"DestinationRule {report.destination_rule}")
        print("subsets: " + ", ".join(f"{s.name} {s.labels}" for s in report.subsets))
    else:
        print(f"{report.virtual_service} (Gateway API)")
    for route in report.routes:
        split = ", ".join(
            f"{d.subset or '-'}={d.weight if d.weight is not None else 100}"
            for d in route.destinations
        )
        match = " (match)" if route.match else ""
        settings = "".join(f"  {key}={value}" for key, value in _flat(route.settings))
        print(f"  http[{route.index}] {route.name or '(unnamed)'}{match}: {split}{settings}")
    for subset, settings in report.policies().items():
        print(f"traffic policy ({subset}):"
              + "".join(f"  {key}={value}" for key, value in _flat(settings)))
    rollout = report.rollout
    if rollout:
        print(
            f"rollout {rollout.release}: {rollout.canary} over {rollout.stable}, "
            f"phase {rollout.phase}, step {rollout.step}, since {rollout.started_at}"
        )
    else:
        print("no rollout in progress")
    promotion = report.promotion
    if promotion:
        still = promotion["stillOnOld"]
        print(f"last promotion: release {promotion['release']} made {promotion['to']} stable "
              f"over {promotion['from']}; " + (
                  f"still sending to {promotion['from']}: {', '.join(still)} (move them before "
                  f"scaling {promotion['from']} down)" if still else
                  f"no route sends to {promotion['from']}"))
    return ExitCode.OK


def _flat(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Nested settings as dotted keys, e.g. retries.perTryTimeout=1s."""
    if isinstance(value, dict) and (value or not prefix):
        return [pair for key, item in value.items()
                for pair in _flat(item, f"{prefix}.{key}" if prefix else str(key))]
    return [(prefix, json.dumps(value) if isinstance(value, dict | list) else value)]


def run_policy(args: argparse.Namespace) -> int:
    from canarykit.mesh import policy
    from canarykit.routers import set_traffic_policy

    values = {setting.name: policy.parse_text(setting.name, text, "cli")
              for setting in policy.SETTINGS
              if (text := getattr(args, f"policy_{setting.name}")) is not None}
    clear = policy.check_clear(",".join(args.clear or []), "--clear")
    policy.check_settings(values, clear, "cli")
    router = _router(args, _connect(args), args.stable_subset, args.canary_subset)
    applied = set_traffic_policy(router, values, clear, route=args.route, subset=args.subset,
                                 dry_run=args.dry_run, audit_log=args.audit_log, naming="cli")
    _print_changes(applied, args)
    return ExitCode.OK


def _pair(text: str | None, flag: str, value_needed: bool = True) -> tuple[str, str] | None:
    from canarykit.core.errors import BadInput

    if text is None:
        return None
    name, sep, value = text.partition("=")
    if not name or (value_needed and not sep):
        raise BadInput(flag, text, "must be NAME=VALUE" if value_needed else "must be "
                       "NAME[=VALUE]")
    return name, value


def _traffic_operations(args: argparse.Namespace, router: Any) -> list[Any]:
    """The router operations the command asks for, each taking (route, extra)."""
    from canarykit.core.errors import BadInput
    from canarykit.rollout.target import renamed

    flags = {"percentage": "--percent", "percent": "--percent", "to_subset": "--to",
             "subset": "--to", "route": "--routes", "rule": "--routes"}
    if args.command == "mirror":
        if args.off:
            return [_renaming(lambda route, extra: router.clear_mirror(route), flags)]
        return [_renaming(lambda route, extra: router.set_mirror(route, args.percent, extra),
                          flags)]
    if args.command == "switch":
        return [_renaming(lambda route, extra: router.switch_all_traffic(route, args.to, extra),
                          flags)]
    from canarykit.rollout.phases import internal_routes

    header = _pair(args.header, "--header") or ("", "")
    cookie = _pair(args.cookie, "--cookie", value_needed=False) or ("", "")
    query = _pair(args.query, "--query") or ("", "")
    flags.update({"header": "--header", "header_value": "--header", "value": "--header",
                  "header_match": "--header-match", "match": "--header-match",
                  "cookie_name": "--cookie", "cookie_value": "--cookie", "cookie": "--cookie",
                  "query_parameter": "--query", "query_value": "--query",
                  "source_labels": "--source-labels", "headers": "--header",
                  "query_params": "--query"})
    try:
        found = internal_routes(router, header=header[0], header_value=header[1],
                                header_match=args.header_match, cookie_name=cookie[0],
                                cookie_value=cookie[1], query_parameter=query[0],
                                query_value=query[1], source_labels=args.source_labels)
    except BadInput as err:
        raise renamed(err, flags) from None
    return [_renaming(operation, {**flags, **{k: flags.get(v, v) for k, v in names.items()}})
            for operation, names in found]


def _renaming(operation: Any, flags: dict[str, str]) -> Any:
    from canarykit.core.errors import BadInput
    from canarykit.rollout.target import renamed

    def run(route: Any, extra: Any) -> Any:
        try:
            return operation(route, extra=extra)
        except BadInput as err:
            raise renamed(err, flags) from None
    return run


def run_traffic(args: argparse.Namespace) -> int:
    """`route`, `mirror`, `switch`: the operations checked together before anything is
    written, then one write each in the rollout (`routers.apply_in_rollout`)."""
    from canarykit.cluster import client as cluster
    from canarykit.mesh import validate
    from canarykit.rollout.target import route_names
    from canarykit.routers import adopt_rollout, apply_in_rollout, open_router

    kube = _connect(args)
    routes = route_names("--routes", args.routes)
    router = open_router(kube, args.service, args.stable_subset, args.canary_subset,
                         args.router, routes)
    objects = router.read()
    state = adopt_rollout(router, objects.route, versions=True)
    operations = _traffic_operations(args, router)
    trial = objects.route
    for operation in operations:
        trial = operation(trial, objects.extra).after
    errors = [m for m in validate.validate_object(trial) if m.level == "Error"]
    if errors:
        raise cluster.InvalidChange(errors)
    applied = apply_in_rollout(
        router, objects, state,
        lambda found: [operation(found.route, found.extra) for operation in operations],
        dry_run=args.dry_run, audit_log=args.audit_log)
    _print_changes(applied, args)
    return ExitCode.OK


def run_weight(args: argparse.Namespace) -> int:
    from canarykit.cluster import client as cluster
    from canarykit.routers import adopt_rollout

    kube = _connect(args)
    router = _router(args, kube, args.stable_subset, args.canary_subset)
    objects = router.read()
    adopt_rollout(router, objects.route)
    if router.name != "istio" or router.routes:
        _print_changes([_set_weight_by_router(router, objects, args)], args)
        return ExitCode.OK
    applied = cluster.set_weight(
        kube,
        args.service,
        args.canary,
        stable=args.stable_subset,
        canary=args.canary_subset,
        route=args.route,
        dry_run=args.dry_run,
        audit_log=args.audit_log,
    )
    _print_changes([applied], args)
    return ExitCode.OK


def _set_weight_by_router(router: Any, objects: Any, args: argparse.Namespace) -> Any:
    """`weight` through the router: a Gateway API route's canary rule, or the Istio routes a
    rollout moves together. Like `cluster.set_weight` it begins the rollout even when the
    weight is already as asked, and refuses a rollout of other versions in progress."""
    from canarykit.cluster import client as cluster
    from canarykit.core.errors import BadInput

    if args.route:
        raise BadInput("--route", args.route, "the rollout in progress moves routes "
                       f"{', '.join(router.routes)} together" if router.routes else
                       "names an Istio http route; a Gateway API route's canary rule is the "
                       "one whose backends are the versions")
    router.set_canary_weight(objects.route, args.canary, objects.extra)  # refused first
    if not args.dry_run:
        cluster.start_rollout(router.cluster, objects.route, router.snapshot(objects),
                              stable=router.stable, canary=router.canary,
                              audit_log=args.audit_log, routes=router.routes)
    fresh = router.read()
    return cluster.apply_change(router.cluster,
                                router.set_canary_weight(fresh.route, args.canary, fresh.extra),
                                dry_run=args.dry_run, audit_log=args.audit_log)


def run_rollback(args: argparse.Namespace) -> int:
    applied = _router(args, _connect(args)).rollback(dry_run=args.dry_run,
                                                     audit_log=args.audit_log)
    _print_changes(applied, args)
    return ExitCode.OK


MAX_NOTES = 10  # notes `audit verify` prints; --output json has them all


def _plan_cluster(folder: Path) -> dict[str, str]:
    """kubeconfig, context and namespace named by a release folder's plan.yaml (if any)."""
    from canarykit.core import yamlsafe
    from canarykit.core.errors import BadInput

    plan = folder / "plan.yaml"
    if not plan.is_file():
        return {}
    if plan.stat().st_size > 1024 * 1024:
        raise BadInput(str(plan), "(plan)", "is larger than 1 MiB: not a plan")
    try:
        loaded = yamlsafe.load(plan.read_text(encoding="utf-8"), str(plan))
    except UnicodeDecodeError:
        raise BadInput(str(plan), "(plan)", "is not UTF-8 text") from None
    if not isinstance(loaded, dict):
        raise BadInput(str(plan), "(plan)", "is not a YAML mapping")
    found = {}
    for name in ("kubeconfig", "context", "namespace"):
        value = loaded.get(name)
        if value not in (None, "") and not isinstance(value, str):
            raise BadInput(f"{plan}: {name}", str(value)[:80], "must be a string")
        if value:
            found[name] = value
    return found


def run_audit_verify(args: argparse.Namespace) -> int:
    from canarykit.cluster import audit
    from canarykit.core.errors import BadInput
    from canarykit.storage import records

    url = args.path.removesuffix("/audit.jsonl") if records.is_url(args.path) else ""
    target = records.fetch(url) if url else Path(args.path)  # a local copy of a stored one
    folder = target if target.is_dir() else None
    path = folder / "audit.jsonl" if folder else target
    shown = f"{url}/audit.jsonl" if url else str(path)
    if not path.exists():
        raise BadInput("PATH", str(path), "no such audit log")
    key = audit.hmac_key()
    if args.cluster or args.kubeconfig or args.context:
        from canarykit.cluster import client as cluster

        plan = _plan_cluster(folder) if folder else {}
        kube = cluster.connect(args.kubeconfig or plan.get("kubeconfig"),
                               args.context or plan.get("context"), plan.get("namespace"),
                               args.timeout)
        check = cluster.verify_log(kube, path, key=key, reconcile=args.reconcile)
    elif args.reconcile:
        raise BadInput("--reconcile", True, "needs the cluster (--cluster or --kubeconfig)")
    else:
        check = audit.verify_chain(path, key=key)
    if args.output == "json":
        print(json.dumps({"path": shown, **check.to_dict()}, indent=2))
    elif check.status == audit.UNREADABLE:
        raise BadInput("audit log", shown, check.problem)
    elif check.ok:
        against = (f"; checked against the cluster at {check.server}: {check.checked} objects "
                   "carry their newest change in it") if check.server else ""
        print(f"{shown}: audit chain intact, {check.records} records ({check.changes} changes), "
              f"head {check.head[:16]}{against}")
    else:
        more = len(check.problems) - 1
        extra = f" (and {more} more problems: --output json lists them)" if more else ""
        print(f"{shown}: audit chain {check.status.upper()}: {check.problem}{extra}",
              file=sys.stderr)
    if args.output == "text":
        for note in check.notes[:MAX_NOTES]:
            print(f"  note: {note}")
        if len(check.notes) > MAX_NOTES:
            print(f"  ... and {len(check.notes) - MAX_NOTES} more notes (--output json)")
    if check.status == audit.UNREADABLE:
        return ExitCode.BAD_INPUT
    return ExitCode.OK if check.ok else ExitCode.FAILED


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:  # parsing too: a command's arguments may come from a module that cannot load
        args = build_parser(_command_of(argv)).parse_args(argv)
        if hasattr(args, "module"):
            return int(importlib.import_module(args.module).run(args))
        return int(args.handler(args))
    except (CanaryKitError, KeyboardInterrupt) as exc:
        if not isinstance(exc, KeyboardInterrupt):
            print(f"canarykit: error: {_one_line(str(exc))}", file=sys.stderr)
        return exit_code_for(exc)


def _one_line(message: str) -> str:
    """An error as the one line a user sees: no line breaks, no credentials in URLs."""
    from canarykit.core.urls import scrub

    return scrub(" ".join(message.split()))
