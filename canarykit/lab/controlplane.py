"""The lab's control plane: Istio and Gateway API objects in the API server -> Envoy LDS/CDS
files.

istiod's job in miniature (`python -m canarykit.lab.controlplane`): list, then watch,
VirtualServices, DestinationRules, Deployments, Services and HTTPRoutes through the official
`kubernetes` client, translate on every change with `envoy_config.translate`, and replace
Envoy's files atomically (Envoy reloads them by itself). Subsets and Services select
Deployments by their pod template labels, as they would select pods; the replicas' addresses
come from the endpoints file the lab writes, so no pods are needed. HTTPRoutes bound to a
Service (GAMMA) route that Service's host. Each client workload of the lab (the load generator,
and any `--client`) gets an outbound listener of its own, translated for its labels as istiod
translates each sidecar's routes (`sourceLabels`). What cannot be expressed goes to the log and
to `problems.json`;
`status.json` says which config version was written when, and up to which resourceVersion of
each kind it is built from, so callers can wait for a change to reach Envoy.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

from canarykit.core.errors import BadInput, CanaryKitError
from canarykit.core.files import write_atomically
from canarykit.core.names import CLUSTER_SUFFIX, check_dns_label, host_fqdn
from canarykit.lab import envoy_config, process_main
from canarykit.lab.envoy_config import ClientWorkload, Endpoint, ServiceBackend, Translation
from canarykit.mesh.istio import ISTIO_GROUP

STATUS_FILE = "status.json"
PROBLEMS_FILE = "problems.json"
KINDS = ("virtualservices", "destinationrules", "deployments", "services", "httproutes")
GATEWAY_GROUP, GATEWAY_VERSION = envoy_config.GATEWAY_GROUP, "v1"
RETRY_SECONDS = 0.5
ABSENT_RETRY_SECONDS = 10.0  # a server that does not serve a kind is asked again this often
POLL_SECONDS = 0.5  # how often the endpoints file is checked for changes


# ---------------------------------------------------------------- pure parts


def read_endpoints(path: str | Path) -> dict[str, dict[str, list[Endpoint]]]:
    """The endpoints file: {service: {deployment: [{"address", "port"}, ...]}}."""
    data = json.loads(Path(path).read_text())
    if not isinstance(data, dict):
        raise BadInput("endpoints", str(path), "must hold a JSON object {service: {deployment: "
                       "[{address, port}]}}")
    out: dict[str, dict[str, list[Endpoint]]] = {}
    for service, deployments in data.items():
        if not isinstance(deployments, dict):
            raise BadInput(f"endpoints.{service}", deployments, "must map deployments to lists")
        out[service] = {}
        for name, replicas in deployments.items():
            try:
                out[service][name] = [Endpoint(str(r["address"]), int(r["port"]))
                                      for r in replicas]
            except (KeyError, TypeError, ValueError):
                raise BadInput(f"endpoints.{service}.{name}", replicas,
                               "must be a list of {address, port}") from None
    return out


def _template_labels(deployment: dict) -> dict[str, str]:
    spec = deployment.get("spec") or {}
    return ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}


def _replicas(deployment: dict) -> int:
    value = (deployment.get("spec") or {}).get("replicas", 1)
    return value if isinstance(value, int) and value >= 0 else 1


def _deployment_replicas(
    deployments: list[dict], running: Mapping[str, Mapping[str, list[Endpoint]]]
) -> dict[str, list[Endpoint]]:
    """Each Deployment's replicas: its first `spec.replicas` of those the lab runs for it."""
    out: dict[str, list[Endpoint]] = {}
    for deployment in deployments:
        name = deployment["metadata"]["name"]
        replicas = [e for by_deployment in running.values() for e in by_deployment.get(name, [])]
        out[name] = list(dict.fromkeys(replicas))[: _replicas(deployment)]
    return out


def resolve_services(
    services: list[dict],
    deployments: list[dict],
    running: Mapping[str, Mapping[str, list[Endpoint]]],
) -> dict[str, ServiceBackend]:
    """Each Service's ports and the replicas of the Deployments whose pod template labels
    include its `spec.selector` (a Service without a selector selects nothing)."""
    replicas = _deployment_replicas(deployments, running)
    by_name = sorted(deployments, key=lambda d: d["metadata"]["name"])
    out = {}
    for service in services:
        spec = service.get("spec") or {}
        selector = spec.get("selector") or {}
        ports = tuple(p["port"] for p in spec.get("ports") or []
                      if isinstance(p, dict) and isinstance(p.get("port"), int))
        chosen = [e for d in by_name if selector and all(
            _template_labels(d).get(k) == v for k, v in selector.items())
            for e in replicas[d["metadata"]["name"]]]
        out[service["metadata"]["name"]] = ServiceBackend(ports, tuple(chosen))
    return out


def resolve_endpoints(
    destination_rules: list[dict],
    deployments: list[dict],
    running: Mapping[str, Mapping[str, list[Endpoint]]],
    namespace: str,
) -> tuple[dict[tuple[str, str], list[Endpoint]], list[str]]:
    """Endpoints per (service, subset) for `envoy_config.translate`, and the problems found.

    A service's Deployments are those the endpoints file runs replicas for; each contributes
    its first `spec.replicas` replicas. A subset takes every Deployment of the service whose
    pod template labels include the subset's labels; subset "" is the whole service.
    """
    problems: list[str] = []
    by_name = {d["metadata"]["name"]: d for d in deployments}
    per_service: dict[str, dict[str, list[Endpoint]]] = {}
    for service, replicas_by_deployment in sorted(running.items()):
        chosen: dict[str, list[Endpoint]] = {}
        for name, replicas in sorted(replicas_by_deployment.items()):
            deployment = by_name.get(name)
            if deployment is None:
                problems.append(f"replicas of {namespace}/{name} run but there is no such "
                                "Deployment; they get no traffic")
                continue
            wanted = _replicas(deployment)
            if wanted > len(replicas):
                problems.append(f"Deployment {namespace}/{name} asks for {wanted} replicas; "
                                f"the lab runs {len(replicas)}")
            chosen[name] = list(replicas[:wanted])
        per_service[service] = chosen
    out: dict[tuple[str, str], list[Endpoint]] = {}
    for service, chosen in per_service.items():
        out[(service, "")] = [e for eps in chosen.values() for e in eps]
    suffix = f".{namespace}{CLUSTER_SUFFIX}"
    for rule in destination_rules:
        host = host_fqdn(str((rule.get("spec") or {}).get("host") or ""), namespace)
        service = host[: -len(suffix)] if host.endswith(suffix) else None
        if service not in per_service:
            continue
        for subset in (rule.get("spec") or {}).get("subsets") or []:
            name, labels = subset.get("name"), subset.get("labels") or {}
            if not name:
                continue
            selected = [dep for dep in per_service[service]
                        if all(_template_labels(by_name[dep]).get(k) == v
                               for k, v in labels.items())]
            if not selected:
                problems.append(f"DestinationRule {namespace}/{rule['metadata']['name']} subset "
                                f"{name} selects no Deployment of {service} (503)")
            out[(service, name)] = [e for dep in selected for e in per_service[service][dep]]
    return out, problems


def translate_objects(
    virtual_services: list[dict],
    destination_rules: list[dict],
    deployments: list[dict],
    running: Mapping[str, Mapping[str, list[Endpoint]]],
    *,
    listener_port: int,
    namespace: str = "default",
    service_port: int = 9080,
    http_routes: list[dict] | None = None,
    services: list[dict] | None = None,
    clients: Sequence[ClientWorkload] = (),
) -> Translation:
    """What the control plane writes for these objects (objects sorted by name first).

    Tests compute the expected version with it; the problems include the endpoint
    resolution's. Raises BadInput on objects the translator refuses. `services` matter only
    as the parents and backends of `http_routes`; `clients` are the client workloads beside
    the load generator (on `listener_port`), each on its own listener.
    """
    def by_name(objects: list[dict]) -> list[dict]:
        return sorted(objects, key=lambda o: o["metadata"]["name"])

    endpoints, problems = resolve_endpoints(by_name(destination_rules), deployments, running,
                                            namespace)
    backends = resolve_services(by_name(services or []), deployments, running) \
        if http_routes else {}
    t = envoy_config.translate(by_name(virtual_services), by_name(destination_rules), endpoints,
                               listener_port=listener_port, namespace=namespace,
                               service_port=service_port,
                               http_routes=by_name(http_routes or []), services=backends,
                               clients=clients)
    t.problems = problems + t.problems
    return t


# ---------------------------------------------------------------- watching


@dataclass
class Inputs:
    """What the watchers have seen: objects per kind by name, and each kind's resourceVersion."""

    objects: dict[str, dict[str, dict]] = field(
        default_factory=lambda: {kind: {} for kind in KINDS})
    seen: dict[str, int] = field(default_factory=lambda: {kind: 0 for kind in KINDS})
    synced: set[str] = field(default_factory=set)
    generation: int = 0


def _lister(api: client.ApiClient, kind: str, namespace: str,
            istio_version: str) -> Callable[..., Any]:
    if kind == "deployments":
        apps = client.AppsV1Api(api)
        return lambda **kw: apps.list_namespaced_deployment(namespace, **kw)
    if kind == "services":
        core = client.CoreV1Api(api)
        return lambda **kw: core.list_namespaced_service(namespace, **kw)
    custom = client.CustomObjectsApi(api)
    if kind == "httproutes":
        return lambda **kw: custom.list_namespaced_custom_object(
            GATEWAY_GROUP, GATEWAY_VERSION, namespace, kind, **kw)
    return lambda **kw: custom.list_namespaced_custom_object(
        ISTIO_GROUP, istio_version, namespace, kind, **kw)


class ControlPlane:
    """The watchers (one thread per kind) and the writer loop, sharing one `Inputs`."""

    def __init__(self, kubeconfig: str, namespace: str, config_dir: Path, listener_port: int,
                 endpoints_file: Path, *, service_port: int = 9080, validate: bool = False,
                 history_dir: Path | None = None, watch_seconds: int = 60,
                 clients: Sequence[ClientWorkload] = ()) -> None:
        self.kubeconfig = kubeconfig
        self.namespace = namespace
        self.config_dir = Path(config_dir)
        self.listener_port = listener_port
        self.endpoints_file = Path(endpoints_file)
        self.service_port = service_port
        self.validate = validate
        self.history_dir = history_dir
        self.watch_seconds = watch_seconds
        self.clients = tuple(clients)
        self.inputs = Inputs()
        self.cond = threading.Condition()
        self.stopping = threading.Event()
        self.written_version = ""
        self.written_at = 0.0
        self.problems: list[str] | None = None  # None: problems.json not written yet

    def log(self, text: str) -> None:
        stamp = datetime.now(UTC).strftime("%H:%M:%S.%f")[:-3]
        sys.stderr.write(f"{stamp} controlplane {text}\n")
        sys.stderr.flush()

    # -- watchers

    def _connect(self) -> tuple[client.ApiClient, str]:
        """A fresh client from the kubeconfig (re-read, so a restarted server is found)."""
        from canarykit.cluster.client import detect_istio_version

        api = config.new_client_from_config(config_file=self.kubeconfig)
        return api, detect_istio_version(api, api.configuration.host)

    def _replace_all(self, kind: str, items: list[dict], rv: int) -> None:
        with self.cond:
            fresh = {o["metadata"]["name"]: o for o in items}
            changed = fresh != self.inputs.objects[kind] or kind not in self.inputs.synced
            self.inputs.objects[kind] = fresh
            self.inputs.seen[kind] = max(self.inputs.seen[kind], rv)
            self.inputs.synced.add(kind)
            if changed:
                self.inputs.generation += 1
            self.cond.notify_all()

    def _apply_event(self, kind: str, event: dict) -> None:
        obj = event.get("object") or {}
        meta = obj.get("metadata") or {}
        rv = int(meta.get("resourceVersion") or 0)
        with self.cond:
            if event.get("type") == "DELETED":
                self.inputs.objects[kind].pop(meta.get("name"), None)
            elif event.get("type") in ("ADDED", "MODIFIED"):
                self.inputs.objects[kind][meta["name"]] = obj
            else:
                return
            self.inputs.seen[kind] = max(self.inputs.seen[kind], rv)
            self.inputs.generation += 1
            self.cond.notify_all()

    def watch_kind(self, kind: str) -> None:
        """List, then watch from the list's resourceVersion; on any end or error, start over."""
        failures = 0
        while not self.stopping.is_set():
            api = None
            try:
                api, istio_version = self._connect()
                lister = _lister(api, kind, self.namespace, istio_version)
                listed = json.loads(lister(_preload_content=False).data)
                rv = int(listed["metadata"].get("resourceVersion") or 0)
                self._replace_all(kind, listed.get("items") or [], rv)
                if failures:
                    self.log(f"{kind}: connected again after {failures} failed attempts")
                failures = 0
                watcher = watch.Watch()
                for event in watcher.stream(lister, resource_version=str(rv),
                                            timeout_seconds=self.watch_seconds,
                                            deserialize=False,
                                            _request_timeout=(5, self.watch_seconds + 15)):
                    if self.stopping.is_set():
                        watcher.stop()
                        break
                    self._apply_event(kind, event)
            except Exception as err:  # the server went away or refused: start over soon
                if isinstance(err, ApiException) and err.status == 404:
                    # A server that does not serve the kind (no Gateway API CRDs): none exist.
                    self._replace_all(kind, [], 0)
                    self.stopping.wait(ABSENT_RETRY_SECONDS)
                    continue
                failures += 1
                if failures in (1, 10) or failures % 100 == 0:
                    self.log(f"{kind}: watch failed ({type(err).__name__}: "
                             f"{str(err).splitlines()[0] if str(err) else ''}); retrying")
                self.stopping.wait(RETRY_SECONDS)
            finally:
                if api is not None:
                    api.close()

    # -- writer

    def _endpoints_stamp(self) -> float:
        try:
            return self.endpoints_file.stat().st_mtime_ns
        except OSError:
            return -1

    def write_once(self, inputs: Inputs) -> None:
        """Translate one snapshot; write the files if the config changed; always the status."""
        error = None
        t = None
        try:
            running = read_endpoints(self.endpoints_file)
            objects = inputs.objects
            t = translate_objects(
                list(objects["virtualservices"].values()),
                list(objects["destinationrules"].values()),
                list(objects["deployments"].values()), running,
                listener_port=self.listener_port, namespace=self.namespace,
                service_port=self.service_port,
                http_routes=list(objects["httproutes"].values()),
                services=list(objects["services"].values()), clients=self.clients)
            if self.validate and t.version != self.written_version:
                envoy_config.validate_with_envoy(t)
        except (CanaryKitError, OSError, ValueError) as err:
            error = str(err)
            self.log(f"cannot translate; keeping config {self.written_version or '(none)'}: "
                     f"{error}")
        if t is not None and error is None:
            if t.version != self.written_version:
                envoy_config.write_config(t, self.config_dir)
                self.written_version, self.written_at = t.version, time.time()
                self.log(f"wrote config {t.version} (resourceVersions {inputs.seen})")
                self._keep_history(t)
            if t.problems != self.problems:
                for problem in t.problems:
                    self.log(f"problem: {problem}")
                self.problems = list(t.problems)
                write_atomically(self.config_dir / PROBLEMS_FILE,
                                 json.dumps(self.problems, indent=1) + "\n", 0o644)
        status = {"version": self.written_version, "written_at": self.written_at,
                  "translated_at": time.time(), "seen": dict(inputs.seen), "error": error,
                  "problems": len(self.problems or [])}
        write_atomically(self.config_dir / STATUS_FILE, json.dumps(status) + "\n", 0o644)

    def _keep_history(self, t: Translation) -> None:
        if self.history_dir is None:
            return
        path = Path(self.history_dir) / f"{t.version}.json"
        if not path.exists():
            data = {"version": t.version, "listeners": t.listeners, "clusters": t.clusters,
                    "problems": t.problems}
            write_atomically(path, json.dumps(data) + "\n", 0o644)

    def run(self) -> None:
        """Start the watchers; translate whenever something changed, until `stop()`."""
        self.config_dir.mkdir(parents=True, exist_ok=True)
        for kind in KINDS:
            threading.Thread(target=self.watch_kind, args=(kind,), name=f"watch-{kind}",
                             daemon=True).start()
        handled, stamp = -1, None

        def pending() -> bool:
            return self.stopping.is_set() or (
                len(self.inputs.synced) == len(KINDS) and self.inputs.generation != handled)

        while not self.stopping.is_set():
            with self.cond:
                self.cond.wait_for(pending, POLL_SECONDS)
                ready = len(self.inputs.synced) == len(KINDS)
                snapshot = copy.deepcopy(self.inputs)
            if self.stopping.is_set() or not ready:
                continue
            now_stamp = self._endpoints_stamp()
            if snapshot.generation == handled and now_stamp == stamp:
                continue
            handled, stamp = snapshot.generation, now_stamp
            self.write_once(snapshot)

    def stop(self) -> None:
        """Safe from a signal handler: only sets the flag the loops poll."""
        self.stopping.set()


def read_status(config_dir: str | Path) -> dict[str, Any] | None:
    """The control plane's status.json, or None before its first translation."""
    try:
        return json.loads((Path(config_dir) / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return None


# ---------------------------------------------------------------- CLI


def parse_client(text: str) -> ClientWorkload:
    """`NAME=PORT:KEY=VALUE,KEY=VALUE` (e.g. `reviews-tester=15002:app=reviews-tester`): a
    client workload, the port of its listener, and its pod labels."""
    head, _, label_text = text.partition(":")
    name, _, port_text = head.partition("=")
    check_dns_label("--client name", name)
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise BadInput("--client port", port_text, f"must be 1..65535 (in {text!r})")
    labels = {}
    for item in filter(None, label_text.split(",")):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise BadInput("--client labels", item, f"must be KEY=VALUE (in {text!r})")
        labels[key] = value
    return ClientWorkload(name, labels, int(port_text))


def client_argument(client: ClientWorkload) -> str:
    """The `--client` value that `parse_client` reads back as `client`."""
    labels = ",".join(f"{key}={value}" for key, value in client.labels.items())
    return f"{client.name}={client.port}:{labels}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kubeconfig", required=True, help="kubeconfig of the API server")
    parser.add_argument("--namespace", default="default", help="namespace to watch")
    parser.add_argument("--config-dir", required=True,
                        help="directory for lds.yaml, cds.yaml, status.json, problems.json")
    parser.add_argument("--listener-port", type=int, required=True,
                        help="port of Envoy's outbound listener")
    parser.add_argument("--service-port", type=int, default=9080,
                        help="the service port routes are built for (default 9080)")
    parser.add_argument("--endpoints", required=True,
                        help="JSON file {service: {deployment: [{address, port}]}}")
    parser.add_argument("--validate", action="store_true",
                        help="check each new config with `envoy --mode validate` before writing")
    parser.add_argument("--history-dir", default=None,
                        help="keep every config written as VERSION.json in this directory")
    parser.add_argument("--watch-seconds", type=int, default=60,
                        help="length of one watch request before listing again (default 60)")
    parser.add_argument("--client", action="append", default=[], metavar="NAME=PORT:LABELS",
                        help="another client workload with its own listener, e.g. "
                        "reviews-tester=15002:app=reviews-tester (repeatable)")


def run(args: argparse.Namespace) -> int:
    """Run until SIGTERM or SIGINT."""
    if not 0 < args.listener_port < 65536:
        sys.stderr.write(f"controlplane: --listener-port: must be 1..65535 "
                         f"(got {args.listener_port})\n")
        return 2
    try:
        clients = [parse_client(text) for text in args.client]
        envoy_config.check_clients([envoy_config.default_client(args.listener_port), *clients])
    except BadInput as err:
        sys.stderr.write(f"controlplane: {err}\n")
        return 2
    plane = ControlPlane(args.kubeconfig, args.namespace, Path(args.config_dir),
                         args.listener_port, Path(args.endpoints),
                         service_port=args.service_port, validate=args.validate,
                         history_dir=Path(args.history_dir) if args.history_dir else None,
                         watch_seconds=args.watch_seconds, clients=clients)
    process_main.stop_on_signals(plane.stop)
    plane.log(f"watching namespace {args.namespace}; writing to {args.config_dir}")
    plane.run()
    plane.log("stopped")
    return 0


if __name__ == "__main__":
    process_main.main("canarykit.lab.controlplane", __doc__, add_arguments, run)
