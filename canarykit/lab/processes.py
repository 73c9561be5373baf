"""The local mesh lab: `canarykit lab up | down | status`.

Rehearsing a rollout needs something real to roll out on. `up` starts, in this order and each
with its own log file in the data dir: the local Kubernetes API server (seeded with the demo
service `reviews`, routed by Istio or, with `--router gateway-api`, by a Gateway API
HTTPRoute over one Service per version), one HTTP process per replica of each version, the
control plane, a real Envoy, a real Prometheus scraping every replica and Envoy every second,
and the load generator. Envoy has one outbound listener per client workload: the load
generator's (`envoy_url`) and a tester's (`reviews-tester`, for routes that `sourceLabels` give
one client). It returns once every part is healthy; a part that fails is named with
its log, and what was started is stopped. The state file (`lab.json`) lists every PID, so
`down` stops them by PID from any shell, and a second `up` on a running lab is refused.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

import yaml
from kubernetes import client, config

from canarykit.core.durations import parse_duration
from canarykit.core.errors import BadInput, CanaryKitError
from canarykit.core.files import write_atomically
from canarykit.core.names import check_dns_label
from canarykit.lab import controlplane, envoy_config, workload
from canarykit.lab.loadgen import DEFAULT_MIX, LoadStats, parse_mix
from canarykit.mesh.istio import ISTIO_GROUP

STATE_FILE = "lab.json"
ISTIO_ROUTER, GATEWAY_API_ROUTER = "istio", "gateway-api"
ROUTERS = (ISTIO_ROUTER, GATEWAY_API_ROUTER)
GATEWAY_GROUP, GATEWAY_VERSION = controlplane.GATEWAY_GROUP, controlplane.GATEWAY_VERSION
DEFAULT_DATA_DIR = ".canarykit-lab"
# What `up` removes before starting afresh (only these: the data dir may hold other files).
RUN_PATHS = ("apiserver", "xds", "history", "prometheus", "run", "kubeconfig",
             "endpoints.json", "envoy-bootstrap.yaml")
STOP_GRACE_SECONDS = 10.0
ANNOTATION_PREFIX = "canarykit.io/"
# Tags as Istio's bootstrap extracts them: Envoy's default cluster-name tag stops at the first
# dot, which would cut outbound|9080|v1|reviews.default.svc.cluster.local in two. Defaults run
# before custom tags, so the needed defaults are listed here instead.
ENVOY_STATS_CONFIG = {"use_all_default_tags": False, "stats_tags": [
    {"tag_name": "envoy.cluster_name",
     "regex": r"^cluster\.((.+?(\..+?\.svc\.cluster\.local)?)\.)"},
    {"tag_name": "envoy.response_code", "regex": r"_rq(_(\d{3}))$"},
    {"tag_name": "envoy.response_code_class", "regex": r"_rq(_(\dxx))$"},
    {"tag_name": "envoy.http_conn_manager_prefix", "regex": r"^http\.((.*?)\.)"},
    {"tag_name": "envoy.listener_address",
     "regex": r"^listener\.(((?:[_.[:digit:]]*|[_\[\]aAbBcCdDeEfF[:digit:]]*))\.)"},
]}
T = TypeVar("T")


class LabError(CanaryKitError):
    """A part of the lab failed, or the lab is in a state that refuses the request."""

    def __init__(self, message: str, part: str | None = None, log: str | None = None,
                 stopped: list[Part] | None = None) -> None:
        super().__init__(message)
        self.part, self.log, self.stopped = part, log, stopped or []


# ---------------------------------------------------------------- configuration


@dataclass
class VersionSettings:
    """One version of the demo service: how many replicas, how they answer."""

    replicas: int = 1
    error_rate: float = 0.0
    error_status: int = 503
    latency_median_ms: float = 20.0
    latency_sigma: float = 0.4

    def behaviour(self) -> dict[str, Any]:
        return {"error_rate": self.error_rate, "error_status": self.error_status,
                "latency_median_ms": self.latency_median_ms,
                "latency_sigma": self.latency_sigma}


def _default_versions() -> dict[str, VersionSettings]:
    return {"v1": VersionSettings(), "v2": VersionSettings()}


@dataclass
class LabConfig:
    """Lab settings (YAML via `--config`, flags override). Ports 0 mean a free port."""

    data_dir: str = DEFAULT_DATA_DIR
    service: str = "reviews"
    namespace: str = "default"
    service_port: int = 9080
    apiserver_port: int = 0
    envoy_port: int = 0
    envoy_admin_port: int = 0
    tester_port: int = 0  # the Envoy listener of the tester client workload
    prometheus_port: int = 0
    loadgen_port: int = 0
    rate: float = 50.0
    mix: str = ",".join(f"{k}={v}" for k, v in DEFAULT_MIX.items())
    sessions: int = 50
    loadgen_concurrency: int = 16
    envoy_concurrency: int = 2
    scrape_interval: str = "1s"
    versions: dict[str, VersionSettings] = field(default_factory=_default_versions)
    start_timeout_s: float = 60.0
    tls: bool = True  # kubectl sends its bearer token only over TLS
    keep_config_history: bool = False  # every config written, kept for `envoy --mode validate`
    validate_configs: bool = False  # the control plane runs `envoy --mode validate` per write
    prometheus: str = ""  # the prometheus binary ("" = on PATH or /usr/bin/prometheus)
    # What routes the demo service: an Istio VirtualService and DestinationRule subsets, or a
    # Gateway API HTTPRoute (GAMMA) over one Service per version (`reviews-v1`, `reviews-v2`).
    router: str = ISTIO_ROUTER

    @property
    def gateway_api(self) -> bool:
        return self.router == GATEWAY_API_ROUTER

    def validate(self) -> LabConfig:
        """Refuse settings that cannot work, before anything starts."""
        if self.router not in ROUTERS:
            raise BadInput("router", self.router, f"must be one of {', '.join(ROUTERS)}")
        check_dns_label("service", self.service)
        check_dns_label("namespace", self.namespace)
        if not isinstance(self.data_dir, str) or not self.data_dir:
            raise BadInput("data_dir", self.data_dir, "must be a directory path")
        for name in ("service_port", "apiserver_port", "envoy_port", "envoy_admin_port",
                     "tester_port", "prometheus_port", "loadgen_port"):
            value = getattr(self, name)
            low = 1 if name == "service_port" else 0
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= 65535:
                raise BadInput(name, value, f"must be a port number from {low} to 65535")
        if self.tester_port and self.tester_port == self.envoy_port:
            raise BadInput("tester_port", self.tester_port, "must differ from envoy_port")
        rate = self.rate
        if isinstance(rate, bool) or not isinstance(rate, int | float) \
                or not math.isfinite(rate) or rate < 0:
            raise BadInput("rate", rate, "must be requests per second >= 0")
        parse_mix(self.mix)
        for name in ("sessions", "loadgen_concurrency", "envoy_concurrency"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise BadInput(name, value, "must be a whole number >= 1")
        if parse_duration(self.scrape_interval, "scrape_interval") <= 0:
            raise BadInput("scrape_interval", self.scrape_interval, "must be above 0")
        timeout = self.start_timeout_s
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
            raise BadInput("start_timeout_s", timeout, "must be seconds above 0")
        for needed in ("v1", "v2"):
            if needed not in self.versions:
                raise BadInput("versions", sorted(self.versions),
                               f"must include {needed} (the demo's stable and canary)")
        for name, settings in self.versions.items():
            check_dns_label(f"versions.{name}", name)
            replicas = settings.replicas
            if isinstance(replicas, bool) or not isinstance(replicas, int) \
                    or not 1 <= replicas <= 20:
                raise BadInput(f"versions.{name}.replicas", replicas,
                               "must be a whole number from 1 to 20")
            try:
                workload.Behaviour.from_dict(settings.behaviour())
            except BadInput as err:
                raise BadInput(f"versions.{name}.{err.field}", err.value, err.problem) from None
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LabConfig:
        """From a YAML/JSON mapping; unknown keys are refused, naming the key."""
        if not isinstance(data, Mapping):
            raise BadInput("config", data, "must be a mapping of lab settings")
        known = {f.name for f in fields(cls)}
        values = dict(data)
        for key in values:
            if key not in known:
                raise BadInput(key, values[key], "is not a lab setting "
                               f"(known: {', '.join(sorted(known))})")
        if "versions" in values:
            values["versions"] = _versions_from(values["versions"])
        return cls(**values)


def _versions_from(data: Any) -> dict[str, VersionSettings]:
    if not isinstance(data, Mapping) or not data:
        raise BadInput("versions", data, "must map version names to settings")
    known = {f.name for f in fields(VersionSettings)}
    out = {}
    for name, settings in data.items():
        settings = settings or {}
        if not isinstance(settings, Mapping):
            raise BadInput(f"versions.{name}", settings, "must be a mapping of settings")
        for key in settings:
            if key not in known:
                raise BadInput(f"versions.{name}.{key}", settings[key],
                               f"is not a version setting (known: {', '.join(sorted(known))})")
        out[str(name)] = VersionSettings(**settings)
    return out


def load_config(path: str | Path) -> LabConfig:
    """A lab config file (YAML)."""
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except OSError as err:
        raise BadInput("--config", str(path), f"cannot be read ({err.strerror})") from None
    except yaml.YAMLError as err:
        raise BadInput("--config", str(path), f"is not valid YAML ({err})") from None
    return LabConfig.from_dict(data)


# ---------------------------------------------------------------- state


@dataclass
class Part:
    """One running process of the lab."""

    name: str
    kind: str  # apiserver, workload, controlplane, envoy, prometheus, loadgen
    pid: int
    log: str
    start_time: int | None = None  # from /proc, so a reused PID is never taken for ours
    url: str = ""
    version: str = ""
    replica: int | None = None


@dataclass
class LabState:
    """Where everything is; saved as lab.json in the data dir."""

    data_dir: str
    service: str
    namespace: str
    kubeconfig: str = ""
    apiserver_url: str = ""
    ca_file: str = ""
    envoy_url: str = ""
    envoy_admin_url: str = ""
    # Client workload -> its Envoy listener (the load generator's is envoy_url).
    client_urls: dict[str, str] = field(default_factory=dict)
    prometheus_url: str = ""
    loadgen_url: str = ""
    config_dir: str = ""
    history_dir: str = ""
    started_at: float = 0.0
    ready: bool = False
    config: dict[str, Any] = field(default_factory=dict)
    parts: list[Part] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LabState:
        values = {k: v for k, v in data.items() if k in {f.name for f in fields(cls)}}
        values["parts"] = [Part(**p) for p in data.get("parts", [])]
        return cls(**values)

    def part(self, name: str) -> Part:
        for part in self.parts:
            if part.name == name:
                return part
        raise LabError(f"the lab has no part named {name}")

    def workloads(self, version: str | None = None) -> list[Part]:
        return [p for p in self.parts
                if p.kind == "workload" and (version is None or p.version == version)]

    def save(self) -> None:
        write_atomically(Path(self.data_dir) / STATE_FILE,
                         json.dumps(self.to_dict(), indent=1) + "\n", 0o600)


def read_state(data_dir: str | Path) -> LabState | None:
    """The state file of the lab in `data_dir`, or None when there is none."""
    path = Path(data_dir).resolve() / STATE_FILE
    try:
        return LabState.from_dict(json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError) as err:
        raise LabError(f"the lab state file {path} cannot be read ({err}); remove it if no lab "
                       "runs") from None


# ---------------------------------------------------------------- processes, by PID only


_CHILDREN: dict[int, subprocess.Popen] = {}  # started by this process: poll() reaps them


def _proc_start_time(pid: int) -> int | None:
    """The process's start time from /proc (None when gone or a zombie)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    rest = text[text.rindex(")") + 2:].split()
    return None if rest[0] in ("Z", "X") else int(rest[19])


def _alive(part: Part) -> bool:
    """Whether this part's process still runs (and is the one we started, not a reused PID)."""
    child = _CHILDREN.get(part.pid)
    if child is not None:
        return child.poll() is None
    if Path("/proc/self/stat").exists():
        started = _proc_start_time(part.pid)
        return started is not None and (part.start_time is None or started == part.start_time)
    try:
        os.kill(part.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _signal(part: Part, sig: int) -> None:
    if _alive(part):
        try:
            os.kill(part.pid, sig)
        except ProcessLookupError:
            pass


def _wait_gone(parts: list[Part], seconds: float) -> list[Part]:
    deadline = time.monotonic() + seconds
    left = [p for p in parts if _alive(p)]
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = [p for p in left if _alive(p)]
    return left


def stop_parts(parts: list[Part], grace: float = STOP_GRACE_SECONDS) -> list[Part]:
    """SIGTERM (the load generator first), SIGKILL after `grace`; returns any still running."""
    first = [p for p in parts if p.kind == "loadgen"]
    rest = [p for p in reversed(parts) if p.kind != "loadgen"]
    for group in (first, rest):
        for part in group:
            _signal(part, signal.SIGTERM)
        for part in _wait_gone(group, grace):
            _signal(part, signal.SIGKILL)
        _wait_gone(group, 5)
    for part in parts:
        child = _CHILDREN.get(part.pid)
        if child is not None and child.poll() is not None:
            del _CHILDREN[part.pid]
    return [p for p in parts if _alive(p)]


def _child_env() -> dict[str, str]:
    """Ours, unbuffered: the children run the installed canarykit with this interpreter."""
    return {**os.environ, "PYTHONUNBUFFERED": "1"}


def _start(state: LabState, name: str, kind: str, argv: list[str], **info: Any) -> Part:
    """Start one process with its own log file; record it in the state file at once."""
    log = Path(state.data_dir) / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                   stderr=subprocess.STDOUT, cwd=state.data_dir,
                                   env=_child_env(), start_new_session=True)
    _CHILDREN[process.pid] = process
    part = Part(name, kind, process.pid, str(log), _proc_start_time(process.pid), **info)
    state.parts.append(part)
    state.save()
    return part


def _log_tail(path: str, lines: int = 15) -> str:
    try:
        text = Path(path).read_text(errors="replace").rstrip().splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(text[-lines:]) or "(empty log)"


def _wait_for(part: Part, check: Callable[[], T | None], timeout: float, what: str) -> T:
    """Poll `check` until it returns something; name the part and its log if it never does."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
        except (OSError, ValueError, KeyError):  # not up yet, or answered half-ready
            result = None
        if result:
            return result
        if not _alive(part):
            raise LabError(f"lab part {part.name} exited before it could {what}; see its log "
                           f"{part.log}:\n{_log_tail(part.log)}", part.name, part.log)
        if time.monotonic() > deadline:
            raise LabError(f"lab part {part.name} did not {what} within {timeout:g}s; see its "
                           f"log {part.log}:\n{_log_tail(part.log)}", part.name, part.log)
        time.sleep(0.05)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _free_port_but(taken: int) -> int:
    """A free port other than `taken` (a port chosen for another listener, not bound yet)."""
    port = _free_port()
    while port == taken:
        port = _free_port()
    return port


def _read_port(path: Path) -> int | None:
    text = path.read_text().strip() if path.exists() else ""
    return int(text) if text else None


def _http_get(url: str, *, ca_file: str = "", timeout: float = 2.0) -> tuple[int, bytes]:
    context = ssl.create_default_context(cafile=ca_file) if url.startswith("https") else None
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=context) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def _http_json(url: str, method: str = "GET", body: Any = None, timeout: float = 5.0) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return json.loads(answer.read())
    except OSError as err:
        raise LabError(f"{url} could not be reached: {err}") from None


# ---------------------------------------------------------------- the demo objects


def _labels(cfg: LabConfig, version: str | None = None) -> dict[str, str]:
    labels = {"app": cfg.service}
    if version is not None:
        labels["version"] = version
    return labels


def seed_service(cfg: LabConfig) -> dict:
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": cfg.service, "namespace": cfg.namespace,
                         "labels": _labels(cfg)},
            "spec": {"selector": _labels(cfg),
                     "ports": [{"name": "http", "port": cfg.service_port,
                                "targetPort": cfg.service_port}]}}


def seed_deployment(cfg: LabConfig, version: str) -> dict:
    labels = _labels(cfg, version)
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": f"{cfg.service}-{version}", "namespace": cfg.namespace,
                         "labels": labels},
            "spec": {"replicas": cfg.versions[version].replicas,
                     "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels},
                                  "spec": {"containers": [{
                                      "name": cfg.service,
                                      "image": f"canarykit/lab-{cfg.service}:{version}",
                                      "ports": [{"containerPort": cfg.service_port}]}]}}}}


def seed_version_service(cfg: LabConfig, version: str) -> dict:
    """The Service of one version (`reviews-v2`), for the Gateway API router's backendRefs."""
    service = seed_service(cfg)
    name = f"{cfg.service}-{version}"
    service["metadata"] = {"name": name, "namespace": cfg.namespace,
                           "labels": _labels(cfg, version)}
    service["spec"]["selector"] = _labels(cfg, version)
    return service


def seed_http_route(cfg: LabConfig) -> dict:
    """Bound to the Service (GAMMA): everything to v1 on the rule `primary`, which already holds
    v2 at weight 0, as the seeded VirtualService does for the Istio router."""
    backends = [{"group": "", "kind": "Service", "name": f"{cfg.service}-{v}",
                 "port": cfg.service_port, "weight": 100 if v == "v1" else 0}
                for v in ("v1", "v2")]
    return {"apiVersion": f"{GATEWAY_GROUP}/{GATEWAY_VERSION}", "kind": "HTTPRoute",
            "metadata": {"name": cfg.service, "namespace": cfg.namespace},
            "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": cfg.service,
                                     "port": cfg.service_port}],
                     "rules": [{"name": "primary",
                                "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                                "backendRefs": backends}]}}


def seed_destination_rule(cfg: LabConfig) -> dict:
    """Subsets for every version, selected by the `version` label."""
    return {"apiVersion": f"{ISTIO_GROUP}/v1", "kind": "DestinationRule",
            "metadata": {"name": cfg.service, "namespace": cfg.namespace},
            "spec": {"host": cfg.service,
                     "subsets": [{"name": v, "labels": {"version": v}} for v in cfg.versions]}}


def seed_virtual_service(cfg: LabConfig) -> dict:
    """Everything to v1 on the named route `primary`, which already holds v2 at weight 0."""
    return {"apiVersion": f"{ISTIO_GROUP}/v1", "kind": "VirtualService",
            "metadata": {"name": cfg.service, "namespace": cfg.namespace},
            "spec": {"hosts": [cfg.service],
                     "http": [{"name": "primary", "route": [
                         {"destination": {"host": cfg.service, "subset": "v1"}, "weight": 100},
                         {"destination": {"host": cfg.service, "subset": "v2"}, "weight": 0}]}]}}


def _api(state: LabState) -> client.ApiClient:
    return config.new_client_from_config(config_file=state.kubeconfig)


def _istio_version(api: client.ApiClient) -> str:
    from canarykit.cluster.client import detect_istio_version

    return detect_istio_version(api, api.configuration.host)


def seed(state: LabState, cfg: LabConfig) -> None:
    """Create the demo service's objects through the official client."""
    api = _api(state)
    try:
        core = client.CoreV1Api(api)
        if cfg.namespace != "default":
            core.create_namespace({"apiVersion": "v1", "kind": "Namespace",
                                   "metadata": {"name": cfg.namespace}})
        core.create_namespaced_service(cfg.namespace, seed_service(cfg))
        if cfg.gateway_api:
            for version in cfg.versions:
                core.create_namespaced_service(cfg.namespace, seed_version_service(cfg, version))
        apps = client.AppsV1Api(api)
        for version in cfg.versions:
            apps.create_namespaced_deployment(cfg.namespace, seed_deployment(cfg, version))
        custom = client.CustomObjectsApi(api)
        if cfg.gateway_api:
            custom.create_namespaced_custom_object(GATEWAY_GROUP, GATEWAY_VERSION, cfg.namespace,
                                                   "httproutes", seed_http_route(cfg))
            return
        for plural, body in (("destinationrules", seed_destination_rule(cfg)),
                             ("virtualservices", seed_virtual_service(cfg))):
            custom.create_namespaced_custom_object(ISTIO_GROUP, "v1", cfg.namespace, plural,
                                                   body)
    finally:
        api.close()


# ---------------------------------------------------------------- up


def _find_prometheus(cfg: LabConfig) -> str:
    if cfg.prometheus:
        if os.access(cfg.prometheus, os.X_OK):
            return cfg.prometheus
        where = cfg.prometheus
    else:
        found = shutil.which("prometheus")
        if found:
            return found
        if os.access("/usr/bin/prometheus", os.X_OK):
            return "/usr/bin/prometheus"
        where = "prometheus on PATH or /usr/bin/prometheus"
    raise LabError(f"Prometheus was not found ({where}); install it with "
                   "`sudo apt-get install -y prometheus` (Debian/Ubuntu), or set `prometheus:` "
                   "in the lab config to its path", "prometheus")


def _refuse_if_running(data_dir: Path) -> None:
    state = read_state(data_dir)
    if state is None:
        return
    running = [p for p in state.parts if _alive(p)]
    if running:
        first = running[0]
        raise LabError(f"a lab is already running in {data_dir} ({first.name} PID {first.pid});"
                       f" run `canarykit lab down --data-dir {data_dir}` first")


def _prepare(data_dir: Path) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    for name in RUN_PATHS:
        path = data_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    (data_dir / STATE_FILE).unlink(missing_ok=True)
    for name in ("run", "xds", "logs"):
        (data_dir / name).mkdir(exist_ok=True)


def up(cfg: LabConfig) -> LabState:
    """Start every part, wait until each is healthy, and return where everything is."""
    cfg = cfg.validate()
    data_dir = Path(cfg.data_dir).resolve()
    _refuse_if_running(data_dir)
    prometheus = _find_prometheus(cfg)
    envoy = envoy_config.find_envoy()
    _prepare(data_dir)
    state = LabState(str(data_dir), cfg.service, cfg.namespace, started_at=time.time(),
                     config=cfg.to_dict())
    try:
        _start_apiserver(state, cfg)
        seed(state, cfg)
        _start_workloads(state, cfg)
        _start_controlplane(state, cfg)
        _start_envoy(state, cfg, envoy)
        _start_prometheus(state, cfg, prometheus)
        _start_loadgen(state, cfg)
    except BaseException as err:
        if not stop_parts(state.parts):
            (data_dir / STATE_FILE).unlink(missing_ok=True)
        if isinstance(err, LabError):
            err.stopped = list(state.parts)
            raise
        if isinstance(err, Exception) and not isinstance(err, CanaryKitError):
            raise LabError(f"the lab could not start: {type(err).__name__}: {err}",
                           stopped=list(state.parts)) from err
        raise
    state.ready = True
    state.save()
    return state


def _python(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", f"canarykit.lab.{module}", *args]


def _start_apiserver(state: LabState, cfg: LabConfig) -> None:
    data = Path(state.data_dir)
    state.kubeconfig = str(data / "kubeconfig")
    argv = _python("apiserver", "--port", str(cfg.apiserver_port), "--data",
                   str(data / "apiserver"), "--kubeconfig", state.kubeconfig)
    if cfg.tls:
        argv.append("--tls")
        state.ca_file = str(data / "apiserver" / "tls.crt")
    part = _start(state, "apiserver", "apiserver", argv)

    def ready() -> str | None:
        if not Path(state.kubeconfig).exists():
            return None
        loaded = yaml.safe_load(Path(state.kubeconfig).read_text())
        url = loaded["clusters"][0]["cluster"]["server"]
        return url if _http_get(f"{url}/healthz", ca_file=state.ca_file)[0] == 200 else None

    state.apiserver_url = part.url = _wait_for(part, ready, cfg.start_timeout_s, "answer /healthz")
    state.save()


def _start_workloads(state: LabState, cfg: LabConfig) -> None:
    run = Path(state.data_dir) / "run"
    started = []
    for version, settings in cfg.versions.items():
        # With the Gateway API router each version is a Service of its own: its replicas
        # report it as destination_service_name (reviews-v2), as Istio's proxies would.
        identity = ["--service", f"{cfg.service}-{version}", "--app", cfg.service] \
            if cfg.gateway_api else ["--service", cfg.service]
        for replica in range(settings.replicas):
            name = f"{cfg.service}-{version}-{replica}"
            ready_file = run / f"{name}.port"
            argv = _python(
                "workload", *identity, "--workload", f"{cfg.service}-{version}",
                "--namespace", cfg.namespace,
                "--version", version, "--replica", str(replica), "--port", "0",
                "--error-rate", str(settings.error_rate),
                "--error-status", str(settings.error_status),
                "--latency-median-ms", str(settings.latency_median_ms),
                "--latency-sigma", str(settings.latency_sigma), "--ready-file", str(ready_file))
            started.append((_start(state, name, "workload", argv, version=version,
                                   replica=replica), ready_file))
    running: dict[str, list[dict]] = {}
    for part, ready_file in started:
        port = _wait_for(part, lambda f=ready_file: _read_port(f), cfg.start_timeout_s,
                         "listen")
        part.url = f"http://127.0.0.1:{port}"
        _wait_for(part, lambda p=part: _http_get(f"{p.url}/healthz")[0] == 200,
                  cfg.start_timeout_s, "answer /healthz")
        running.setdefault(f"{cfg.service}-{part.version}", []).append(
            {"address": "127.0.0.1", "port": port})
    write_atomically(Path(state.data_dir) / "endpoints.json",
                     json.dumps({cfg.service: running}, indent=1) + "\n", 0o644)
    state.save()


def tester_client(cfg: LabConfig, port: int) -> envoy_config.ClientWorkload:
    """A second client of the demo service (`reviews-tester`, labelled app=reviews-tester), so
    that routes for one client workload (`sourceLabels`) can be rehearsed."""
    name = f"{cfg.service[:56].rstrip('-')}-tester"
    return envoy_config.ClientWorkload(name, {"app": name}, port)


def client_url(state: LabState, source: str) -> str:
    """Where the requests of client workload `source` enter the mesh: its sidecar's listener."""
    urls = state.client_urls or {envoy_config.DEFAULT_CLIENT: state.envoy_url}
    if source not in urls:
        raise BadInput("source", source, f"is not a client workload of the lab (known: "
                       f"{', '.join(urls)})")
    return urls[source]


def _start_controlplane(state: LabState, cfg: LabConfig) -> None:
    data = Path(state.data_dir)
    state.config_dir = str(data / "xds")
    envoy_port = cfg.envoy_port or _free_port_but(cfg.tester_port)
    tester = tester_client(cfg, cfg.tester_port or _free_port_but(envoy_port))
    state.envoy_url = f"http://127.0.0.1:{envoy_port}"
    state.client_urls = {envoy_config.DEFAULT_CLIENT: state.envoy_url,
                         tester.name: f"http://127.0.0.1:{tester.port}"}
    argv = _python("controlplane", "--kubeconfig", state.kubeconfig, "--namespace",
                   cfg.namespace, "--config-dir", state.config_dir, "--listener-port",
                   str(envoy_port), "--client", controlplane.client_argument(tester),
                   "--service-port", str(cfg.service_port),
                   "--endpoints", str(data / "endpoints.json"))
    if cfg.keep_config_history:
        state.history_dir = str(data / "history")
        argv += ["--history-dir", state.history_dir]
    if cfg.validate_configs:
        argv.append("--validate")
    part = _start(state, "controlplane", "controlplane", argv)

    def written() -> dict | None:
        status = controlplane.read_status(state.config_dir)
        if status and status.get("error"):
            raise LabError(f"the control plane cannot translate the seeded objects: "
                           f"{status['error']}; see its log {part.log}", part.name, part.log)
        return status if status and status.get("version") else None

    _wait_for(part, written, cfg.start_timeout_s, "write the first Envoy configuration")


def _start_envoy(state: LabState, cfg: LabConfig, envoy: str) -> None:
    data = Path(state.data_dir)
    boot = data / "envoy-bootstrap.yaml"
    document = envoy_config.bootstrap(Path(state.config_dir), admin_port=cfg.envoy_admin_port,
                                      node_id="canarykit-lab")
    document["stats_config"] = ENVOY_STATS_CONFIG
    boot.write_text(envoy_config.to_yaml(document))
    admin_file = data / "run" / "envoy-admin-address"
    argv = [envoy, "-c", str(boot), "--disable-hot-restart", "--concurrency",
            str(cfg.envoy_concurrency), "--drain-time-s", "1", "--drain-strategy", "immediate",
            "--admin-address-path", str(admin_file), "--log-level", "info"]
    part = _start(state, "envoy", "envoy", argv)
    address = _wait_for(part, lambda: admin_file.exists() and admin_file.read_text().strip(),
                        cfg.start_timeout_s, "open its admin port")
    state.envoy_admin_url = part.url = f"http://{address}"
    state.save()
    _wait_for(part, lambda: _http_get(f"{part.url}/ready")[0] == 200, cfg.start_timeout_s,
              "become ready")
    want = controlplane.read_status(state.config_dir) or {}
    _wait_for(part, lambda: envoy_version(state) == want.get("version"), cfg.start_timeout_s,
              f"serve the control plane's configuration {want.get('version')}")


def prometheus_config(state: LabState, cfg: LabConfig) -> dict:
    """Scrape every replica's /metrics and Envoy's /stats/prometheus every `scrape_interval`."""
    replicas = [{"targets": [p.url.removeprefix("http://")],
                 "labels": {"pod": p.name}} for p in state.workloads()]
    return {
        "global": {"scrape_interval": cfg.scrape_interval, "scrape_timeout": cfg.scrape_interval,
                   "evaluation_interval": cfg.scrape_interval},
        "scrape_configs": [
            {"job_name": cfg.service, "static_configs": replicas},
            {"job_name": "envoy", "metrics_path": "/stats/prometheus",
             "static_configs": [{"targets": [state.envoy_admin_url.removeprefix("http://")]}]},
        ],
    }


def _prometheus_targets_up(url: str) -> bool:
    status, body = _http_get(f"{url}/api/v1/targets?state=active")
    if status != 200:
        return False
    targets = json.loads(body)["data"]["activeTargets"]
    return bool(targets) and all(t.get("health") == "up" for t in targets)


def _start_prometheus(state: LabState, cfg: LabConfig, binary: str) -> None:
    home = Path(state.data_dir) / "prometheus"
    home.mkdir(parents=True, exist_ok=True)
    config_file = home / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(prometheus_config(state, cfg), sort_keys=False))
    port = cfg.prometheus_port or _free_port()
    state.prometheus_url = f"http://127.0.0.1:{port}"
    argv = [binary, f"--config.file={config_file}", f"--storage.tsdb.path={home / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=7d"]
    part = _start(state, "prometheus", "prometheus", argv, url=state.prometheus_url)
    _wait_for(part, lambda: _http_get(f"{part.url}/-/ready")[0] == 200, cfg.start_timeout_s,
              "become ready")
    _wait_for(part, lambda: _prometheus_targets_up(part.url), cfg.start_timeout_s,
              "scrape every replica and Envoy")


def _start_loadgen(state: LabState, cfg: LabConfig) -> None:
    ready_file = Path(state.data_dir) / "run" / "loadgen.port"
    argv = _python("loadgen", "--target", state.envoy_url, "--host", cfg.service,
                   "--rate", str(cfg.rate), "--mix", cfg.mix, "--sessions", str(cfg.sessions),
                   "--concurrency", str(cfg.loadgen_concurrency),
                   "--stats-port", str(cfg.loadgen_port), "--ready-file", str(ready_file))
    part = _start(state, "loadgen", "loadgen", argv)
    port = _wait_for(part, lambda: _read_port(ready_file), cfg.start_timeout_s,
                     "start its stats server")
    state.loadgen_url = part.url = f"http://127.0.0.1:{port}"
    _wait_for(part, lambda: _http_get(f"{part.url}/healthz")[0] == 200, cfg.start_timeout_s,
              "answer /healthz")


# ---------------------------------------------------------------- down and status


def down(data_dir: str | Path = DEFAULT_DATA_DIR) -> list[Part]:
    """Stop every part by PID and remove the state file; returns the parts that were running.

    Idempotent: without a state file (or with every PID gone) it does nothing.
    """
    data_dir = Path(data_dir).resolve()
    state = read_state(data_dir)
    if state is None:
        return []
    running = [p for p in state.parts if _alive(p)]
    left = stop_parts(state.parts)
    if left:
        names = ", ".join(f"{p.name} (PID {p.pid})" for p in left)
        raise LabError(f"could not stop {names}; the state file {data_dir / STATE_FILE} is kept")
    (data_dir / STATE_FILE).unlink(missing_ok=True)
    return running


def _health(state: LabState, part: Part) -> bool:
    if not _alive(part):
        return False
    try:
        if part.kind == "apiserver":
            return _http_get(f"{part.url}/healthz", ca_file=state.ca_file)[0] == 200
        if part.kind in ("workload", "loadgen"):
            return _http_get(f"{part.url}/healthz")[0] == 200
        if part.kind == "controlplane":
            status = controlplane.read_status(state.config_dir)
            return bool(status and status.get("version") and not status.get("error"))
        if part.kind == "envoy":
            return _http_get(f"{part.url}/ready")[0] == 200
        if part.kind == "prometheus":
            return _http_get(f"{part.url}/-/ready")[0] == 200 and _prometheus_targets_up(
                part.url)
    except (OSError, ValueError, KeyError):
        return False
    return False


def status(data_dir: str | Path = DEFAULT_DATA_DIR) -> dict[str, Any]:
    """Where the lab's endpoints are and, per part, its PID, whether it runs and is healthy."""
    data_dir = Path(data_dir).resolve()
    state = read_state(data_dir)
    if state is None:
        return {"data_dir": str(data_dir), "running": False, "healthy": False, "parts": []}
    parts = []
    for part in state.parts:
        alive = _alive(part)
        parts.append({"name": part.name, "kind": part.kind, "pid": part.pid, "running": alive,
                      "healthy": alive and _health(state, part), "url": part.url,
                      "log": part.log})
    return {
        "data_dir": state.data_dir,
        "running": any(p["running"] for p in parts),
        "healthy": state.ready and bool(parts) and all(p["healthy"] for p in parts),
        "kubeconfig": state.kubeconfig,
        "prometheus_url": state.prometheus_url,
        "envoy_url": state.envoy_url,
        "envoy_admin_url": state.envoy_admin_url,
        "client_urls": state.client_urls,
        "loadgen_url": state.loadgen_url,
        "apiserver_url": state.apiserver_url,
        "router": state.config.get("router", ISTIO_ROUTER),
        "config_version": (controlplane.read_status(state.config_dir) or {}).get("version"),
        "parts": parts,
    }


# ---------------------------------------------------------------- using a running lab


def envoy_version(state: LabState) -> str | None:
    """The config version (set by the control plane) that all of Envoy's listeners serve; None
    while one is still warming or they differ (each client workload has its own listener)."""
    status, body = _http_get(f"{state.envoy_admin_url}/config_dump?resource=dynamic_listeners")
    if status != 200:
        return None
    versions = set()
    for item in json.loads(body).get("configs", []):
        if item.get("warming_state"):
            return None
        listener = (item.get("active_state") or {}).get("listener") or {}
        version = (((listener.get("metadata") or {}).get("filter_metadata") or {})
                   .get("canarykit") or {}).get("version")
        if version:
            versions.add(version)
    return versions.pop() if len(versions) == 1 else None


def current_resource_versions(state: LabState) -> dict[str, int]:
    """The newest resourceVersion of each watched kind in the API server now."""
    api = _api(state)
    try:
        istio_version = _istio_version(api)
        out = {}
        for kind in controlplane.KINDS:
            lister = controlplane._lister(api, kind, state.namespace, istio_version)
            items = json.loads(lister(_preload_content=False).data).get("items") or []
            out[kind] = max((int(i["metadata"]["resourceVersion"]) for i in items), default=0)
        return out
    finally:
        api.close()


def wait_for_routing(state: LabState, resource_versions: Mapping[str, int] | None = None,
                     timeout: float = 20.0) -> str:
    """Wait until Envoy serves a config built from the objects as they are now; its version.

    `resource_versions` (kind -> resourceVersion) defaults to the newest of each kind.
    """
    want = dict(resource_versions or current_resource_versions(state))
    deadline = time.monotonic() + timeout
    last: dict | None = None
    while True:
        last = controlplane.read_status(state.config_dir)
        if last and all(last["seen"].get(k, 0) >= v for k, v in want.items()):
            if last.get("error"):
                raise LabError(f"the control plane cannot translate the objects: "
                               f"{last['error']}")
            try:
                if envoy_version(state) == last["version"]:
                    return last["version"]
            except OSError:
                pass
        if time.monotonic() > deadline:
            raise LabError(f"Envoy did not serve the objects at resourceVersions {want} within "
                           f"{timeout:g}s (control plane status {last}); see "
                           f"{Path(state.data_dir) / 'logs'}")
        time.sleep(0.01)


def _reset_object(custom: client.CustomObjectsApi, group: str, version: str, plural: str,
                  seed_object: dict) -> None:
    """Replace the object by its seed (keeping metadata but canarykit's annotations), unless
    that changes nothing."""
    namespace, name = seed_object["metadata"]["namespace"], seed_object["metadata"]["name"]
    current = custom.get_namespaced_custom_object(group, version, namespace, plural, name)
    meta = dict(current["metadata"])
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items()
                   if not k.startswith(ANNOTATION_PREFIX)}
    meta["annotations"] = annotations or None
    body = {**seed_object, "apiVersion": f"{group}/{version}",
            "metadata": {k: v for k, v in meta.items() if v is not None}}
    if body != {**current, "apiVersion": body["apiVersion"]}:
        custom.replace_namespaced_custom_object(group, version, namespace, plural, name, body)


def reset(state: LabState, *, wait: bool = True) -> str | None:
    """Back to the seed: the route (VirtualService and DestinationRule, or the HTTPRoute;
    no rollout annotations), Deployment replicas, each replica's configured behaviour, and
    fresh load generator counts."""
    cfg = LabConfig.from_dict(state.config)
    api = _api(state)
    try:
        custom = client.CustomObjectsApi(api)
        if cfg.gateway_api:
            _reset_object(custom, GATEWAY_GROUP, GATEWAY_VERSION, "httproutes",
                          seed_http_route(cfg))
        else:
            istio_version = _istio_version(api)
            for plural, seed_object in (("virtualservices", seed_virtual_service(cfg)),
                                        ("destinationrules", seed_destination_rule(cfg))):
                _reset_object(custom, ISTIO_GROUP, istio_version, plural, seed_object)
        apps = client.AppsV1Api(api)
        for version, settings in cfg.versions.items():
            name = f"{cfg.service}-{version}"
            if apps.read_namespaced_deployment(name, cfg.namespace).spec.replicas \
                    != settings.replicas:
                apps.patch_namespaced_deployment(name, cfg.namespace,
                                                 {"spec": {"replicas": settings.replicas}})
    finally:
        api.close()
    for version, settings in cfg.versions.items():
        set_behaviour(state, version, **settings.behaviour())
    reset_load(state)
    return wait_for_routing(state) if wait else None


def set_behaviour(state: LabState, version: str, *, replica: int | None = None,
                  **changes: Any) -> list[dict[str, Any]]:
    """Change how the replicas of `version` answer (all, or one `replica`), while running."""
    parts = [p for p in state.workloads(version) if replica is None or p.replica == replica]
    if not parts:
        raise BadInput("version" if replica is None else "replica",
                       version if replica is None else replica,
                       f"no such replica in the lab (versions: "
                       f"{', '.join(sorted({p.version for p in state.workloads()}))})")
    workload.Behaviour().updated(changes)  # refuse bad input before changing any replica
    return [workload.set_behaviour(p.url, **changes) for p in parts]


def load_stats(state: LabState) -> LoadStats:
    """The load generator's counts since its last reset."""
    return LoadStats.from_dict(_http_json(f"{state.loadgen_url}/stats?latencies=1"))


def reset_load(state: LabState) -> LoadStats:
    """Start the load generator's counts afresh; returns the counts until now."""
    return LoadStats.from_dict(_http_json(f"{state.loadgen_url}/-/reset", "POST", {}))


def set_rate(state: LabState, rate: float) -> dict[str, Any]:
    """Change the load generator's rate (0 pauses it and waits for requests in flight)."""
    return _http_json(f"{state.loadgen_url}/-/rate", "PUT", {"rate": rate})


# ---------------------------------------------------------------- CLI


def _version_values(flag: str, convert: Callable[[str], Any]) -> Callable[[str], tuple]:
    def parse(text: str) -> tuple[str, Any]:
        name, sep, value = text.partition("=")
        if not sep or not name:
            raise argparse.ArgumentTypeError(f"{flag} takes VERSION=VALUE (got {text!r})")
        try:
            return name, convert(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} {name}: not a number ({value!r})") from None

    return parse


def _add_where(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", default=None,
                        help=f"the lab's directory (default: {DEFAULT_DATA_DIR} in the current "
                        "directory, or data_dir from --config)")
    parser.add_argument("--config", default=None, help="lab config file (YAML)")


def add_up_arguments(parser: argparse.ArgumentParser) -> None:
    _add_where(parser)
    for flag, what in (("--apiserver-port", "API server"), ("--envoy-port", "Envoy listener"),
                       ("--envoy-admin-port", "Envoy admin"),
                       ("--tester-port", "Envoy listener of the tester client"),
                       ("--prometheus-port", "Prometheus"),
                       ("--loadgen-port", "load generator stats")):
        parser.add_argument(flag, type=int, default=None, help=f"{what} port (0: a free one)")
    parser.add_argument("--rate", type=float, default=None,
                        help="load generator requests per second (default 50; 0 pauses)")
    parser.add_argument("--mix", default=None,
                        help="request kinds, e.g. plain=0.85,header=0.05,cookie=0.05,"
                        "session=0.05")
    parser.add_argument("--sessions", type=int, default=None, help="session-id pool size")
    parser.add_argument("--replicas", action="append", default=[], metavar="VERSION=N",
                        type=_version_values("--replicas", int),
                        help="replicas of a version (repeatable; default 1 each of v1, v2)")
    parser.add_argument("--error-rate", action="append", default=[], metavar="VERSION=RATE",
                        type=_version_values("--error-rate", float),
                        help="share of a version's responses that are errors (repeatable)")
    parser.add_argument("--latency-ms", action="append", default=[], metavar="VERSION=MS",
                        type=_version_values("--latency-ms", float),
                        help="median latency of a version in ms (repeatable; default 20)")
    parser.add_argument("--latency-sigma", action="append", default=[], metavar="VERSION=S",
                        type=_version_values("--latency-sigma", float),
                        help="log-normal sigma of a version's latency (repeatable)")
    parser.add_argument("--start-timeout", type=float, default=None,
                        help="seconds each part may take to become healthy (default 60)")
    parser.add_argument("--router", choices=ROUTERS, default=None,
                        help="what routes the demo service: istio (a VirtualService and "
                        "DestinationRule subsets, the default) or gateway-api (an HTTPRoute "
                        "bound to the Service, one Service per version)")
    parser.add_argument("--output", choices=("text", "json"), default="text")


def add_down_arguments(parser: argparse.ArgumentParser) -> None:
    _add_where(parser)


def add_status_arguments(parser: argparse.ArgumentParser) -> None:
    _add_where(parser)
    parser.add_argument("--output", choices=("text", "json"), default="text")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`up`, `down` and `status` as subcommands (dest `lab_command`, as in cli.py)."""
    commands = parser.add_subparsers(dest="lab_command", required=True, metavar="COMMAND")
    add_up_arguments(commands.add_parser("up", help="start the lab and wait until it is healthy"))
    add_down_arguments(commands.add_parser("down", help="stop every part of the lab by PID"))
    add_status_arguments(commands.add_parser("status", help="where the lab is and its health"))


def config_from_args(args: argparse.Namespace) -> LabConfig:
    """The config file (if any) with the flags given on top."""
    cfg = load_config(args.config) if getattr(args, "config", None) else LabConfig()
    if getattr(args, "data_dir", None):
        cfg.data_dir = args.data_dir
    for flag in ("apiserver_port", "envoy_port", "envoy_admin_port", "tester_port",
                 "prometheus_port", "loadgen_port", "rate", "mix", "sessions", "router"):
        value = getattr(args, flag, None)
        if value is not None:
            setattr(cfg, flag, value)
    if getattr(args, "start_timeout", None) is not None:
        cfg.start_timeout_s = args.start_timeout
    for flag, setting in (("replicas", "replicas"), ("error_rate", "error_rate"),
                          ("latency_ms", "latency_median_ms"),
                          ("latency_sigma", "latency_sigma")):
        for version, value in getattr(args, flag, None) or []:
            settings = cfg.versions.setdefault(version, VersionSettings())
            setattr(settings, setting, value)
    return cfg


def run_up(args: argparse.Namespace) -> int:
    state = up(config_from_args(args))
    if args.output == "json":
        print(json.dumps(status(state.data_dir), indent=2))
        return 0
    print(f"lab is up in {state.data_dir}")
    print(f"router:      {state.config.get('router', ISTIO_ROUTER)}")
    print(f"kubeconfig:  {state.kubeconfig}")
    print(f"prometheus:  {state.prometheus_url}")
    print(f"envoy:       {state.envoy_url}  (admin {state.envoy_admin_url})")
    for name, url in state.client_urls.items():
        if url != state.envoy_url:
            print(f"envoy:       {url}  (as client workload {name})")
    print(f"loadgen:     {state.loadgen_url}/stats")
    print("to use it (nothing finds the lab by itself):")
    for line in use_lines(state):
        print(f"  {line}")
    return 0


def use_lines(state: LabState) -> list[str]:
    """The shell lines that point kubectl and canarykit at this lab, and only when run."""
    from canarykit.rollout.target import PROMETHEUS_URL_ENV  # its pandas only when needed

    return [f"export KUBECONFIG={shlex.quote(state.kubeconfig)}",
            f"export {PROMETHEUS_URL_ENV}={shlex.quote(state.prometheus_url)}",
            f"canarykit weight {state.service} --canary 10"]


def run_down(args: argparse.Namespace) -> int:
    data_dir = config_from_args(args).data_dir
    stopped = down(data_dir)
    if stopped:
        print(f"stopped {len(stopped)} lab processes in {Path(data_dir).resolve()}")
    else:
        print(f"no lab running in {Path(data_dir).resolve()}")
    return 0


def run_status(args: argparse.Namespace) -> int:
    """Exit 0 when the lab runs and every part is healthy, else 1."""
    report = status(config_from_args(args).data_dir)
    if args.output == "json":
        print(json.dumps(report, indent=2))
    elif not report["parts"]:
        print(f"no lab in {report['data_dir']}")
    else:
        print(f"lab in {report['data_dir']}: {'healthy' if report['healthy'] else 'NOT healthy'}")
        for key in ("router", "kubeconfig", "prometheus_url", "envoy_url", "envoy_admin_url",
                    "loadgen_url", "config_version"):
            print(f"  {key + ':':17} {report[key]}")
        for part in report["parts"]:
            health = "healthy" if part["healthy"] else (
                "running, unhealthy" if part["running"] else "stopped")
            print(f"  {part['name']:22} PID {part['pid']:<8} {health:20} {part['url']}")
    return 0 if report["healthy"] else 1


def run(args: argparse.Namespace) -> int:
    """Dispatch on `args.lab_command` (up, down or status)."""
    return {"up": run_up, "down": run_down, "status": run_status}[args.lab_command](args)


if __name__ == "__main__":
    cli = argparse.ArgumentParser(prog="python -m canarykit.lab.processes", description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(cli)
    parsed = cli.parse_args()
    try:
        raise SystemExit(run(parsed))
    except BadInput as exc:
        print(f"canarykit lab: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except CanaryKitError as exc:
        print(f"canarykit lab: error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
