"""Reading and changing Istio objects in a cluster, safely, through the official client.

Every change is validated locally, then sent as a server-side dry run, then applied
with optimistic concurrency on `resourceVersion`. On a conflict the object is read
again: if the fields canarykit manages still hold what the change was computed from,
the change is re-applied on top of the fresh object; otherwise it stops with
`ConcurrentChangeError`, so an update is never lost nor blindly overwritten (a GitOps
controller reverting weights, another runner, a person with kubectl).

Every request has a timeout (`--timeout`, else CANARYKIT_KUBE_TIMEOUT, else
DEFAULT_KUBE_TIMEOUT), and the audit log is never held locked across a request: the change's
intent is recorded first, the request made, its outcome recorded after (see `audit`).
"""

from __future__ import annotations

import json
import math
import os
import socket
import stat
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import urllib3
import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from canarykit.cluster import audit, retry
from canarykit.cluster.state import (
    AUDIT_HEAD_ANNOTATION,
    RolloutState,
    canarykit_annotations,
    new_state,
    read_state,
    with_annotation,
    with_state,
)
from canarykit.core import yamlsafe
from canarykit.core.errors import BadInput, CanaryKitError, ClusterError, ConcurrentChangeError
from canarykit.core.names import check_dns_label, check_service_host, service_name
from canarykit.core.urls import scrub, without_userinfo
from canarykit.mesh import istio, validate
from canarykit.mesh.traffic import Change, restore_managed_fields

PLURALS = {"VirtualService": "virtualservices", "DestinationRule": "destinationrules",
           "HTTPRoute": "httproutes", "GRPCRoute": "grpcroutes"}
GATEWAY_API = ("gateway.networking.k8s.io", "v1")  # the Gateway API routes' group and version
NO_ANSWER = retry.NO_ANSWER
MAX_CONFLICT_RETRIES = 5
DEFAULT_KUBECONFIG = "~/.kube/config"  # what kubectl reads with no flag and no $KUBECONFIG
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"  # token, ca.crt, namespace
# Where a pod's service-account files are, when not at the standard place (a test, or a
# runner that mounts them elsewhere).
SERVICE_ACCOUNT_DIR_ENV = "CANARYKIT_SERVICE_ACCOUNT_DIR"
ROUTE_SETTINGS = ("mirror", "mirrorPercentage", "fault", "timeout", "retries")  # shown by status
DEFAULT_KUBE_TIMEOUT = 30.0  # seconds per request to the API server, unless told otherwise
KUBE_TIMEOUT_ENV = "CANARYKIT_KUBE_TIMEOUT"
MAX_KUBE_TIMEOUT = 3600.0
MAX_KUBECONFIG_BYTES = 4 * 1024 * 1024  # kubeconfigs are kilobytes; /dev/zero is not one


class InvalidChange(CanaryKitError):
    """A change whose result Istio would reject; nothing was sent to the cluster."""

    def __init__(self, messages: list[validate.Message]) -> None:
        self.messages = messages
        super().__init__("; ".join(m.format() for m in messages))


@dataclass
class Cluster:
    api: client.ApiClient
    namespace: str
    istio_version: str
    actor: str
    server: str  # without userinfo: it is printed and recorded
    context: str | None = None
    timeout: float = DEFAULT_KUBE_TIMEOUT  # seconds per request


@dataclass
class AppliedChange:
    change: Change
    result: dict[str, Any]
    dry_run: bool
    attempts: int = 1
    audit_record: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.change.to_dict(),
            "dryRun": self.dry_run,
            "attempts": self.attempts,
            "resourceVersion": self.result.get("metadata", {}).get("resourceVersion"),
            "auditHash": (self.audit_record or {}).get("hash"),
        }


@dataclass(frozen=True)
class DestinationStatus:
    subset: str
    weight: int | None  # None: not written (a lone destination then takes all the traffic)


@dataclass(frozen=True)
class RouteStatus:
    index: int
    name: str
    match: list[dict[str, Any]]
    destinations: list[DestinationStatus]
    settings: dict[str, Any]  # the ROUTE_SETTINGS the route has, as written


@dataclass(frozen=True)
class SubsetStatus:
    name: str | None
    labels: dict[str, str]
    traffic_policy: dict[str, Any] | None = None


@dataclass(frozen=True)
class ServiceStatus:
    """`status()`: the service's routes, weights, subsets and the rollout in progress."""

    service: str
    namespace: str
    server: str
    virtual_service: str
    virtual_service_resource_version: str | None
    destination_rule: str
    subsets: list[SubsetStatus]
    traffic_policy: dict[str, Any] | None
    routes: list[RouteStatus]
    rollout: RolloutState | None
    router: str = "istio"  # gateway-api: `virtual_service` is the route, e.g. HTTPRoute NS/NAME
    promotion: dict[str, Any] | None = None  # the last promotion and what is still on the old

    def to_dict(self) -> dict[str, Any]:
        """The JSON `canarykit status --output json` prints (the rollout without its snapshot)."""
        return {
            "service": self.service,
            "namespace": self.namespace,
            "server": self.server,
            "router": self.router,
            "virtualService": self.virtual_service,
            "virtualServiceResourceVersion": self.virtual_service_resource_version,
            "destinationRule": self.destination_rule,
            "subsets": [{"name": s.name, "labels": s.labels,
                         **({"trafficPolicy": s.traffic_policy} if s.traffic_policy else {})}
                        for s in self.subsets],
            "trafficPolicy": self.traffic_policy,
            "routes": [
                {
                    "index": r.index,
                    "name": r.name,
                    "match": r.match,
                    "destinations": [
                        {"subset": d.subset, "weight": d.weight} for d in r.destinations
                    ],
                    **r.settings,
                }
                for r in self.routes
            ],
            "rollout": None
            if self.rollout is None
            else {k: v for k, v in self.rollout.to_dict().items() if k != "snapshot"},
            "lastPromotion": self.promotion,
        }

    def policies(self) -> dict[str, dict[str, Any]]:
        """The DestinationRule's traffic policy: `all subsets` (top level) and per subset."""
        found = {"all subsets": self.traffic_policy} if self.traffic_policy else {}
        found.update({f"subset {s.name}": s.traffic_policy for s in self.subsets
                      if s.traffic_policy})
        return found


# --- connecting ---------------------------------------------------------------------------


def kubeconfig_source(kubeconfig: str | None = None) -> tuple[str, str] | None:
    """(field, path list) of the kubeconfig kubectl would read, or None for in-cluster config.

    Decided at call time, as kubectl does: the flag, else a non-empty $KUBECONFIG (a path
    list), else ~/.kube/config; in-cluster config only inside a pod with none of these.
    """
    if kubeconfig:
        return "--kubeconfig", kubeconfig
    if os.environ.get("KUBECONFIG"):
        return "KUBECONFIG", os.environ["KUBECONFIG"]
    default = os.path.expanduser(DEFAULT_KUBECONFIG)
    if os.path.exists(default) or "KUBERNETES_SERVICE_HOST" not in os.environ:
        return "--kubeconfig", default
    return None


def request_timeout(value: Any = None, field_name: str = "--timeout") -> float:
    """Seconds each request to the API server may take: `value`, else $CANARYKIT_KUBE_TIMEOUT,
    else DEFAULT_KUBE_TIMEOUT. A hung server then fails one command, not every one after it."""
    if value is None or value == "":
        value, field_name = os.environ.get(KUBE_TIMEOUT_ENV) or "", KUBE_TIMEOUT_ENV
        if not value:
            return DEFAULT_KUBE_TIMEOUT
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = math.nan
    if not (0 < seconds <= MAX_KUBE_TIMEOUT):
        raise BadInput(field_name, str(value)[:40],
                       f"must be a number of seconds above 0, at most {MAX_KUBE_TIMEOUT:g}")
    return seconds


class _TimedApiClient(client.ApiClient):
    """The official client, with a timeout on every request that does not name its own, and
    the retries of `retry`: so the calls other modules make through `Cluster.api` (leases,
    approvals) have them too."""

    def __init__(self, configuration: client.Configuration, timeout: float) -> None:
        # Connection attempts may be retried (nothing was sent); a request that was sent is
        # never re-sent by urllib3 after a read error or timeout: a PUT must not land twice
        # unseen, and a hung server must cost one timeout, not four.
        configuration.retries = urllib3.Retry(total=1, connect=1, read=0, redirect=0,
                                              status=0, other=0, raise_on_status=False)
        super().__init__(configuration)
        self.timeout = timeout
        request = self.rest_client.request  # every request of every client version ends here

        def timed(method: str, url: str, *args: Any, **kwargs: Any) -> Any:
            kwargs["_request_timeout"] = kwargs.get("_request_timeout") or timeout
            return retry.send(request, method, url, retry.budget_for(timeout), *args, **kwargs)

        self.rest_client.request = timed


def _read_bounded(field_name: str, path: str) -> str:
    """A kubeconfig's text: a regular file (a FIFO or /dev/zero would never end), bounded,
    UTF-8."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise BadInput(field_name, path, f"cannot read the kubeconfig ({exc.strerror})") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        kind = "a folder" if os.path.isdir(path) else "not a regular file"
        raise BadInput(field_name, path, f"is not a valid kubeconfig: {kind}")
    os.set_blocking(fd, True)
    with os.fdopen(fd, "rb") as stream:
        data = stream.read(MAX_KUBECONFIG_BYTES + 1)
    if len(data) > MAX_KUBECONFIG_BYTES:
        raise BadInput(field_name, path, "is not a valid kubeconfig: larger than "
                       f"{MAX_KUBECONFIG_BYTES // (1024 * 1024)} MiB")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise BadInput(field_name, path,
                       "is not a valid kubeconfig: not UTF-8 text (a binary file?)") from None


def _read_kubeconfig(field: str, path: str) -> dict[str, Any]:
    """One kubeconfig file as a mapping ({} when empty); BadInput naming it when malformed."""
    try:
        loaded = yamlsafe.load(_read_bounded(field, path), field) or {}
    except BadInput as exc:
        if exc.value == path:
            raise
        raise BadInput(field, path, f"is not a valid kubeconfig: {exc.problem}") from None
    if not isinstance(loaded, dict):
        raise BadInput(field, path, "is not a valid kubeconfig: not a YAML mapping")
    contexts = loaded.get("contexts") or []
    if not isinstance(contexts, list) or not all(
        isinstance(c, dict) and isinstance(c.get("name"), str) for c in contexts
    ):
        raise BadInput(field, path, "is not a valid kubeconfig: contexts is not a list of "
                       "named contexts")
    if not isinstance(loaded.get("current-context") or "", str):
        raise BadInput(field, path, "is not a valid kubeconfig: current-context is not a name")
    return loaded


def _connect_kubeconfig(
    field: str, paths: str, context: str | None, timeout: float
) -> tuple[client.ApiClient, str | None, str | None]:
    """A client from the listed kubeconfig files merged as kubectl merges them (missing files
    skipped, the first file to set a name or the current context wins), its namespace and user."""
    listed = [os.path.expanduser(p) for p in paths.split(os.pathsep) if p]
    existing = [p for p in listed if os.path.exists(p)]
    if not existing:
        one = len(listed) == 1
        raise BadInput(field, paths, "no such kubeconfig file" if one else
                       "none of these kubeconfig files exists")
    loaded = {p: _read_kubeconfig(field, p) for p in existing}
    files = [p for p in existing if loaded[p]]
    if not files:
        raise BadInput(field, paths, "is not a valid kubeconfig: empty")
    contexts: dict[str, dict[str, Any]] = {}
    for path in files:
        for entry in loaded[path].get("contexts") or []:
            contexts.setdefault(entry["name"], entry)
    current = next((loaded[p]["current-context"] for p in files
                    if loaded[p].get("current-context")), None)
    if context and context not in contexts:
        names = ", ".join(contexts)
        raise BadInput("--context", context, f"not in the kubeconfig (has: {names[:200]})")
    name = context or current
    if name not in contexts:
        raise BadInput(field, paths, f"its current-context {str(name)[:80]!r} is not one of its "
                       "contexts (give --context)")
    configuration = type.__call__(client.Configuration)
    try:
        config.load_kube_config(config_file=os.pathsep.join(files), context=name,
                                client_configuration=configuration, persist_config=False)
    except (ConfigException, yaml.YAMLError, OSError, TypeError, KeyError, AttributeError,
            ValueError) as exc:  # what the client's loader raises on a malformed file
        problem = scrub(" ".join(str(exc).split()))[:200] or type(exc).__name__
        raise BadInput(field, paths, f"is not a usable kubeconfig: {problem}") from None
    chosen = contexts[name].get("context")
    chosen = chosen if isinstance(chosen, dict) else {}
    namespace, user = chosen.get("namespace"), chosen.get("user")
    return (_TimedApiClient(configuration, timeout), namespace if isinstance(namespace, str)
            else None, user if isinstance(user, str) else None)


def connect(
    kubeconfig: str | None = None,
    context: str | None = None,
    namespace: str | None = None,
    timeout: float | None = None,
) -> Cluster:
    """Connect as kubectl would (see `kubeconfig_source`) and learn the Istio API version.

    `kubeconfig` is a file, or a path list like $KUBECONFIG. `timeout`: seconds per request
    (see `request_timeout`).
    """
    timeout = request_timeout(timeout)
    source = kubeconfig_source(kubeconfig)
    if source is None:
        folder = Path(os.environ.get(SERVICE_ACCOUNT_DIR_ENV) or SERVICE_ACCOUNT_DIR)
        try:
            configuration = type.__call__(client.Configuration)
            config.incluster_config.InClusterConfigLoader(
                token_filename=str(folder / "token"), cert_filename=str(folder / "ca.crt"),
            ).load_and_set(configuration)
        except ConfigException as exc:
            raise ClusterError(f"cannot load the in-cluster configuration: {exc}") from exc
        api: client.ApiClient = _TimedApiClient(configuration, timeout)
        context_namespace, user = _read_text(str(folder / "namespace")), None
    else:
        api, context_namespace, user = _connect_kubeconfig(*source, context, timeout)
    namespace = namespace or context_namespace or "default"
    check_dns_label("--namespace", namespace)
    server = without_userinfo(api.configuration.host)
    version = detect_istio_version(api, server)
    actor = who_am_i(api) or user or "unknown"
    return Cluster(api, namespace, version, actor, server, context, timeout)


def _read_text(path: str) -> str | None:
    try:
        return Path(path).read_text().strip() or None
    except OSError:
        return None


def detect_istio_version(api: client.ApiClient, server: str = "") -> str:
    """The networking.istio.io version the server serves, preferring v1."""
    try:
        groups = client.ApisApi(api).get_api_versions()
    except ApiException as exc:
        raise _cluster_error(exc, "discovery of API groups") from exc
    except Exception as exc:  # urllib3 connection errors and timeouts
        raise ClusterError(f"cannot reach the Kubernetes API at {without_userinfo(server)}: "
                           f"{_network_problem(exc, api)}") from None
    for group in groups.groups or []:
        if group.name == istio.ISTIO_GROUP:
            served = [v.version for v in group.versions]
            for preferred in istio.ISTIO_VERSIONS:
                if preferred in served:
                    return preferred
    raise ClusterError(
        f"the cluster at {server} does not serve {istio.ISTIO_GROUP} (is Istio installed?)"
    )


def who_am_i(api: client.ApiClient) -> str | None:
    """The user or service account the server authenticates us as (never the credential)."""
    try:
        review = client.AuthenticationV1Api(api).create_self_subject_review(
            client.V1SelfSubjectReview(
                api_version="authentication.k8s.io/v1", kind="SelfSubjectReview"
            )
        )
    except Exception:  # older servers lack SelfSubjectReview: fall back to the kubeconfig name
        return None
    user_info = review.status.user_info if review.status else None
    return user_info.username if user_info else None


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return scrub(text)[:200]


def _network_problem(exc: BaseException, api: Any) -> str:
    """Why a request got no answer, in a few words (a timeout says which setting to raise)."""
    reason = getattr(exc, "reason", None) or exc
    if isinstance(reason, (urllib3.exceptions.TimeoutError, socket.timeout, TimeoutError)):
        seconds = getattr(api, "timeout", None)
        within = f" within {seconds:g} s" if seconds else ""
        return f"no answer{within} (raise --timeout or {KUBE_TIMEOUT_ENV} if the server is slow)"
    return _short(reason)


def _unreachable(cluster: Cluster, what: str, exc: BaseException) -> ClusterError:
    return ClusterError(f"{what}: cannot reach the Kubernetes API at {cluster.server}: "
                        f"{_network_problem(exc, cluster.api)}")


def _status_message(exc: ApiException) -> str:
    try:
        message = json.loads(exc.body or "{}").get("message") or str(exc.reason)
    except (ValueError, AttributeError, RecursionError):
        message = str(exc.reason)
    return scrub(str(message))[:500]


def api_error_text(exc: ApiException) -> str:
    """`403 Forbidden: <the Status message>`: Kubernetes' own words on what was refused."""
    return f"{exc.status} {exc.reason}: {_status_message(exc)}"


def _cluster_error(exc: ApiException, what: str) -> ClusterError:
    if exc.status == 401:
        return ClusterError(
            f"{what}: the cluster refused our credentials ({exc.status} {exc.reason})"
        )
    if exc.status == 403:  # Kubernetes says who may not do what: keep its words
        return ClusterError(f"{what}: forbidden (403): {_status_message(exc)}")
    return ClusterError(f"{what}: {exc.status} {_status_message(exc)}")


# --- reading ------------------------------------------------------------------------------


def _custom(cluster: Cluster) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(cluster.api)


def api_version(cluster: Cluster, kind: str) -> tuple[str, str]:
    """(group, version) of a kind canarykit changes: Istio's as the cluster serves it."""
    if kind in ("HTTPRoute", "GRPCRoute"):
        return GATEWAY_API
    return istio.ISTIO_GROUP, cluster.istio_version


class NotFound(ClusterError):
    """The object does not exist (any more)."""


def get_object(
    cluster: Cluster, kind: str, name: str, namespace: str | None = None
) -> dict[str, Any]:
    """One object of `kind` in `namespace` (default: the cluster's namespace)."""
    namespace = namespace or cluster.namespace
    try:
        return _custom(cluster).get_namespaced_custom_object(
            *api_version(cluster, kind), namespace, PLURALS[kind], name
        )
    except ApiException as exc:
        if exc.status == 404:
            raise NotFound(f"{kind} {namespace}/{name} not found") from None
        raise _cluster_error(exc, f"reading {kind} {namespace}/{name}") from None
    except NO_ANSWER as exc:
        raise _unreachable(cluster, f"reading {kind} {namespace}/{name}", exc) from None


def list_objects(cluster: Cluster, kind: str) -> list[dict[str, Any]]:
    try:
        found = _custom(cluster).list_namespaced_custom_object(
            *api_version(cluster, kind), cluster.namespace, PLURALS[kind]
        )
    except ApiException as exc:
        raise _cluster_error(exc, f"listing {PLURALS[kind]} in {cluster.namespace}") from None
    except NO_ANSWER as exc:
        raise _unreachable(cluster, f"listing {PLURALS[kind]} in {cluster.namespace}",
                           exc) from None
    return found.get("items", [])


def find_virtual_service(cluster: Cluster, service: str) -> dict[str, Any]:
    """The VirtualService routing `service`: the one named after it, else the one whose hosts do."""
    return _find_for_host(cluster, "VirtualService", service)


def find_destination_rule(cluster: Cluster, service: str) -> dict[str, Any]:
    return _find_for_host(cluster, "DestinationRule", service)


def _find_for_host(cluster: Cluster, kind: str, service: str) -> dict[str, Any]:
    """One GET when the object is named after the service (the usual case): listing every
    object of the namespace costs the API server in proportion to the services it holds."""
    check_service_host("SERVICE", service)

    def routes(obj: dict[str, Any]) -> bool:
        spec = obj.get("spec") or {}
        hosts = spec.get("hosts", []) if kind == "VirtualService" else [spec.get("host", "")]
        return any(istio.same_host(h, service, cluster.namespace) for h in hosts)

    try:
        named = get_object(cluster, kind, service_name(service))
    except NotFound:
        named = None
    if named is not None and routes(named):
        return named
    matches = [obj for obj in list_objects(cluster, kind) if routes(obj)]
    if not matches:
        raise NotFound(f"no {kind} for host {service!r} in namespace {cluster.namespace}")
    if len(matches) > 1:
        names = ", ".join(m["metadata"]["name"] for m in matches)
        raise ClusterError(f"several {kind}s route host {service!r}: {names}; name one")
    return matches[0]


def annotate(cluster: Cluster, kind: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
    """A JSON merge patch of an object's annotations only (None removes one): for signals to
    the runners, such as an approval, that are not traffic changes and need no audit head."""
    extra = set(patch) - {"metadata"} or set(patch.get("metadata", {})) - {"annotations"}
    if extra:
        raise BadInput("patch", sorted(extra), "may only change metadata.annotations")
    try:
        return _custom(cluster).patch_namespaced_custom_object(
            *api_version(cluster, kind), cluster.namespace, PLURALS[kind], name, patch)
    except ApiException as exc:
        raise _cluster_error(exc, f"annotating {kind} {cluster.namespace}/{name}") from None
    except NO_ANSWER as exc:
        raise _unreachable(cluster, f"annotating {kind} {cluster.namespace}/{name}",
                           exc) from None


# --- changing -----------------------------------------------------------------------------


def _guarded_fields(obj: dict[str, Any]) -> dict[str, Any]:
    """What a concurrent writer must not have touched: managed spec fields and our annotations."""
    return {"spec": istio.managed_fields(obj), "annotations": canarykit_annotations(obj)}


def _rebase(fresh: dict[str, Any], change: Change, head: str | None) -> dict[str, Any]:
    """The change's managed fields and annotations on top of the freshly read object."""
    body = istio.with_managed_fields(fresh, istio.managed_fields(change.after))
    wanted = canarykit_annotations(change.after)
    for key in set(canarykit_annotations(fresh)) | set(wanted):
        body = with_annotation(body, key, wanted.get(key))
    if head:
        body = with_annotation(body, AUDIT_HEAD_ANNOTATION, head)
    return body


def _replace(cluster: Cluster, body: dict[str, Any], dry_run: bool) -> dict[str, Any]:
    kind, name = body["kind"], body["metadata"]["name"]
    group, version = api_version(cluster, kind)
    body = {**body, "apiVersion": f"{group}/{version}"}
    try:
        return _custom(cluster).replace_namespaced_custom_object(
            group,
            version,
            cluster.namespace,
            PLURALS[kind],
            name,
            body,
            dry_run="All" if dry_run else None,
            field_manager="canarykit",
        )
    except NO_ANSWER as exc:
        raise _unreachable(cluster, f"changing {istio.object_ref(body)}", exc) from None


def _differing(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    names = [
        f"spec.{k}" for k in set(a["spec"]) | set(b["spec"]) if a["spec"].get(k) != b["spec"].get(k)
    ]
    names += [
        f"metadata.annotations[{k}]"
        for k in set(a["annotations"]) | set(b["annotations"])
        if a["annotations"].get(k) != b["annotations"].get(k)
    ]
    return sorted(names)


@dataclass
class _Progress:
    """Whether a real (not dry-run) write was sent and no answer came: then nobody knows
    whether it was applied until the object is read again."""

    unanswered_write: bool = False


def apply_change(
    cluster: Cluster,
    change: Change,
    *,
    dry_run: bool = False,
    audit_log: Path | str | None = None,
) -> AppliedChange:
    """Validate, dry-run and apply one object change, recorded in the audit log around it.

    The intent is appended (and unfinished changes of earlier runs settled) before anything
    is sent, its hash goes with the change as the object's audit head, and the outcome is
    appended after: a process that dies in between leaves an intent the next writer and
    `audit verify` resolve against the cluster. The log is never locked during a request.
    """
    ref = istio.object_ref(change.after)
    if not change.changed:
        return AppliedChange(change, change.before, dry_run, attempts=0)
    errors = [m for m in validate.validate_object(change.after) if m.level == "Error"]
    if errors:
        raise InvalidChange(errors)
    if dry_run:
        return AppliedChange(change, _apply_with_retries(cluster, change, None, True)[0], True)
    log_path = Path(audit_log) if audit_log else audit.default_audit_log()
    intent = _record_intent(cluster, log_path, _audit_entry(cluster, change, ref))
    progress = _Progress()
    try:
        result, attempts = _apply_with_retries(cluster, change, intent["hash"], False, progress)
    except BaseException as exc:
        outcome = (audit.UNKNOWN if progress.unanswered_write else audit.CONFLICT
                   if isinstance(exc, ConcurrentChangeError) else audit.FAILED)
        try:
            _record_outcome(log_path, intent, outcome, error=_short(exc))
        except CanaryKitError:
            pass  # the intent stays unfinished: the next writer settles it
        raise
    try:
        _record_outcome(log_path, intent, audit.APPLIED,
                        resourceVersion=result.get("metadata", {}).get("resourceVersion"),
                        attempts=attempts)
    except CanaryKitError as exc:
        raise CanaryKitError(f"{ref} was changed, but its outcome could not be recorded ({exc}); "
                             "the next change records it") from None
    return AppliedChange(change, result, False, attempts, intent)


def _record_intent(cluster: Cluster, log_path: Path, entry: dict[str, Any]) -> dict[str, Any]:
    """Append the intent; first settle the unfinished changes of earlier runs on this cluster,
    asking the cluster about them with the log let go."""
    with audit.locked_log(log_path) as log:
        waiting = audit.unfinished(log.records(), cluster.server)
        if not waiting:
            return log.append(entry)
    heads = _current_heads(cluster, {item.target for item in waiting})
    with audit.locked_log(log_path) as log:
        audit.settle(log, heads, actor=cluster.actor, server=cluster.server)
        return log.append(entry)


def _record_outcome(log_path: Path, intent: dict[str, Any], result: str, **details: Any) -> None:
    with audit.locked_log(log_path) as log:
        log.append({"type": audit.OUTCOME, "intent": intent["hash"], "target": intent["target"],
                    "result": result, **{k: v for k, v in details.items() if v is not None}})


def _current_heads(cluster: Cluster, targets: set[str]) -> dict[str, str | None]:
    """target -> the audit head its object carries (None: no head, or no object); a target
    the cluster does not answer for is left out, so its change stays unfinished."""
    heads: dict[str, str | None] = {}
    for target in sorted(targets):
        try:
            heads[target] = _head_of(cluster, target)
        except NotFound:
            heads[target] = None
        except ClusterError:
            continue
    return heads


def _head_of(cluster: Cluster, target: str) -> str | None:
    kind, namespace, name = audit.managed_target(target) or ("", "", "")
    obj = get_object(cluster, kind, name, namespace)
    head = (obj.get("metadata", {}).get("annotations") or {}).get(AUDIT_HEAD_ANNOTATION)
    return head if isinstance(head, str) else None


def object_heads(cluster: Cluster, targets: list[str]) -> list[audit.ObjectHead]:
    """What the cluster says of each managed object the audit log names (for verification)."""
    found = []
    for target in targets:
        try:
            found.append(audit.ObjectHead(target, True, _head_of(cluster, target)))
        except NotFound:
            found.append(audit.ObjectHead(target, False))
    return found


def verify_log(
    cluster: Cluster, path: Path | str, *, key: bytes | None = None, reconcile: bool = False
) -> audit.ChainCheck:
    """The audit log checked against this cluster (see `audit.verify_chain`); `reconcile`
    first records the outcome of the unfinished changes the cluster answers for."""
    if reconcile and Path(path).is_file():
        with audit.locked_log(path) as log:
            waiting = audit.unfinished(log.records(), cluster.server)
        if waiting:
            heads = _current_heads(cluster, {item.target for item in waiting})
            with audit.locked_log(path) as log:
                audit.settle(log, heads, actor=cluster.actor, server=cluster.server)
    return audit.verify_chain(path, key=key, server=cluster.server,
                              cluster_heads=lambda targets: object_heads(cluster, targets))


def _give_up_seconds(cluster: Cluster) -> float:
    """How long after its intent a change may still land: every request of every attempt,
    each with one connection retry, plus a minute for clocks that differ."""
    return 60 + 2 * cluster.timeout * (3 * MAX_CONFLICT_RETRIES + 1)


def _apply_with_retries(
    cluster: Cluster, change: Change, head: str | None, dry_run: bool,
    progress: _Progress | None = None,
) -> tuple[dict[str, Any], int]:
    ref = istio.object_ref(change.after)
    progress = progress or _Progress()
    expected = _guarded_fields(change.before)
    body = _rebase(change.before, change, head)
    for attempt in range(1, MAX_CONFLICT_RETRIES + 1):
        try:
            preview = _replace(cluster, body, dry_run=True)
            _refuse_dropped_fields(body, preview)
            if dry_run:
                return preview, attempt
            progress.unanswered_write = True
            result = _replace(cluster, body, dry_run=False)
            progress.unanswered_write = False
            return result, attempt
        except ApiException as exc:
            progress.unanswered_write = False
            if exc.status == 422:
                raise ClusterError(
                    f"the cluster rejected the change to {ref}: {_status_message(exc)}"
                ) from None
            if exc.status == 404:
                raise ClusterError(f"{ref} was deleted while canarykit was changing it") from None
            if exc.status != 409:
                raise _cluster_error(exc, f"changing {ref}") from None
        fresh = get_object(cluster, change.after["kind"], change.after["metadata"]["name"])
        if head and canarykit_annotations(fresh).get(AUDIT_HEAD_ANNOTATION) == head:
            return fresh, attempt  # our own write landed (a request sent twice)
        found = _guarded_fields(fresh)
        if found != expected:
            fields = ", ".join(_differing(expected, found))
            raise ConcurrentChangeError(
                f"{ref} was changed by someone else since canarykit read it ({fields} differ; "
                f"resourceVersion {change.before['metadata'].get('resourceVersion')} -> "
                f"{fresh['metadata'].get('resourceVersion')}); not applying {change.operation}. "
                "Check who changed it (e.g. a GitOps controller) and run again."
            )
        body = _rebase(fresh, change, head)
    raise ClusterError(f"{ref}: gave up after {MAX_CONFLICT_RETRIES} conflicting writes")


def _refuse_dropped_fields(sent: dict[str, Any], preview: dict[str, Any]) -> None:
    """A change whose dry run lost managed fields it sent is not written: the cluster's CRDs
    are older than those fields and would prune them without an error (a mirror at 10 %
    would copy every request, a connection limit would silently not be there)."""
    dropped = istio.missing_fields(istio.managed_fields(sent), istio.managed_fields(preview),
                                   "spec")
    if not dropped:
        return
    if sent.get("kind") in ("HTTPRoute", "GRPCRoute"):
        crds = "its Gateway API CRDs are older than these fields; install Gateway API v1.2 or later"
    else:
        crds = "its Istio CRDs are older than these fields; upgrade Istio's CRDs"
    raise ClusterError(f"{istio.object_ref(sent)}: the cluster dropped {', '.join(dropped[:5])} "
                       f"from the change ({crds}); nothing was changed")


def _audit_entry(cluster: Cluster, change: Change, ref: str) -> dict[str, Any]:
    return {
        "type": audit.INTENT,
        "actor": cluster.actor,
        "server": without_userinfo(cluster.server),
        "target": ref,
        "apiVersion": "/".join(api_version(cluster, change.after["kind"])),
        "operation": change.operation,
        "params": change.params,
        "before": istio.managed_fields(change.before),
        "after": istio.managed_fields(change.after),
        "baseResourceVersion": change.before.get("metadata", {}).get("resourceVersion"),
        "baseAuditHead": canarykit_annotations(change.before).get(AUDIT_HEAD_ANNOTATION),
        "deadline": audit.deadline_after(_give_up_seconds(cluster)),
    }


# --- rollouts -----------------------------------------------------------------------------


def istio_snapshot(vs: dict[str, Any], dr: dict[str, Any]) -> dict[str, Any]:
    """What rollback restores for an Istio service: both objects' managed fields."""
    return {"virtualService": istio.managed_fields(vs),
            "destinationRule": istio.managed_fields(dr),
            "destinationRuleName": dr["metadata"]["name"]}


def begin_rollout(
    cluster: Cluster,
    service: str,
    *,
    stable: str = "v1",
    canary: str = "v2",
    release: str = "",
    audit_log: Path | str | None = None,
) -> RolloutState:
    """Record the pre-rollout managed fields on the VirtualService, once per rollout."""
    vs = find_virtual_service(cluster, service)
    if read_state(vs) is not None:
        return start_rollout(cluster, vs, {}, stable=stable, canary=canary, release=release,
                             audit_log=audit_log)
    snapshot = istio_snapshot(vs, find_destination_rule(cluster, service))
    return start_rollout(cluster, vs, snapshot, stable=stable, canary=canary, release=release,
                         audit_log=audit_log)


def start_rollout(
    cluster: Cluster,
    route: dict[str, Any],
    snapshot: dict[str, Any],
    *,
    stable: str,
    canary: str,
    release: str = "",
    audit_log: Path | str | None = None,
    routes: tuple[str, ...] = (),
) -> RolloutState:
    """Record `snapshot` (what rollback restores) as the rollout state of the object that
    routes the service (a VirtualService or an HTTPRoute); the rollout in progress when
    there is one of the same versions. `routes` (those moving together) go in the record,
    so the report reads the weights where the rollout set them."""
    state = read_state(route)
    if state is not None:
        if (state.stable, state.canary) != (stable, canary):
            raise BadInput(
                "canary",
                canary,
                f"a rollout of {state.canary} over {state.stable} is already in progress "
                f"(release {state.release}); roll it back or finish it first",
            )
        return state
    state = new_state(stable, canary, snapshot, release, routes)
    change = Change(
        "begin_rollout",
        {"stable": stable, "canary": canary, "release": state.release,
         **({"routes": list(routes)} if routes else {})},
        route,
        with_state(route, state),
    )
    apply_change(cluster, change, audit_log=audit_log)
    return state


def change_virtual_service(
    cluster: Cluster,
    service: str,
    operation: Callable[[dict[str, Any]], Change],
    *,
    dry_run: bool = False,
    audit_log: Path | str | None = None,
) -> AppliedChange:
    """Apply `operation` (a traffic.* function bound to its parameters) to the service's VS."""
    return apply_change(
        cluster,
        operation(find_virtual_service(cluster, service)),
        dry_run=dry_run,
        audit_log=audit_log,
    )


def rollback(
    cluster: Cluster, service: str, *, dry_run: bool = False, audit_log: Path | str | None = None
) -> list[AppliedChange]:
    """Restore every managed field to the pre-rollout snapshot and end the rollout.

    The VirtualService goes first, so no route points at a subset the restored
    DestinationRule might no longer define. The rollout state (with the snapshot) stays
    on the VirtualService, marked `rolling-back`, until the DestinationRule is restored
    too, so a rollback killed half way is finished by the next one.
    """
    vs = find_virtual_service(cluster, service)
    state = read_state(vs)
    if state is None:
        raise ClusterError(
            f"no rollout in progress on {istio.object_ref(vs)}: nothing to roll back"
        )
    snapshot, params = state.snapshot, {"release": state.release}
    state.phase = "rolling-back"
    restored_vs = restore_managed_fields(vs, snapshot["virtualService"])
    vs_change = replace(
        restored_vs, operation="rollback", params=params, after=with_state(restored_vs.after, state)
    )
    applied = [apply_change(cluster, vs_change, dry_run=dry_run, audit_log=audit_log)]
    dr_name = snapshot.get("destinationRuleName") or service_name(service)
    dr = get_object(cluster, "DestinationRule", dr_name)
    dr_change = replace(
        restore_managed_fields(dr, snapshot["destinationRule"]), operation="rollback", params=params
    )
    applied.append(apply_change(cluster, dr_change, dry_run=dry_run, audit_log=audit_log))
    vs = applied[0].result
    end = Change("end_rollout", params, vs, with_state(vs, None))
    applied.append(apply_change(cluster, end, dry_run=dry_run, audit_log=audit_log))
    return applied


def set_weight(
    cluster: Cluster,
    service: str,
    canary_weight: int,
    *,
    stable: str = "v1",
    canary: str = "v2",
    route: str | None = None,
    dry_run: bool = False,
    audit_log: Path | str | None = None,
) -> AppliedChange:
    """Send `canary_weight`% of the canary route to `canary`, starting a rollout if none is."""
    from canarykit.mesh.traffic import set_canary_weight

    dr = find_destination_rule(cluster, service)

    def operation(vs: dict[str, Any]) -> Change:
        return set_canary_weight(
            vs, canary_weight, stable=stable, canary=canary, route=route, dr=dr
        )

    operation(find_virtual_service(cluster, service))  # refuse bad input before any write
    if not dry_run:
        begin_rollout(cluster, service, stable=stable, canary=canary, audit_log=audit_log)
    return change_virtual_service(cluster, service, operation, dry_run=dry_run, audit_log=audit_log)


def status(cluster: Cluster, service: str, vs: dict[str, Any] | None = None) -> ServiceStatus:
    """What the service's traffic looks like now: routes, weights, subsets, rollout (`vs`:
    the VirtualService when the caller has just read it)."""
    vs = vs if vs is not None else find_virtual_service(cluster, service)
    dr = find_destination_rule(cluster, service)
    routes = [
        RouteStatus(
            index=index,
            name=route.get("name", ""),
            match=route.get("match", []),
            destinations=[
                DestinationStatus((d.get("destination") or {}).get("subset", ""), d.get("weight"))
                for d in istio.route_destinations(route)
            ],
            settings={k: route[k] for k in ROUTE_SETTINGS if k in route},
        )
        for index, route in enumerate(vs.get("spec", {}).get("http") or [])
    ]
    return ServiceStatus(
        service=service,
        namespace=cluster.namespace,
        server=cluster.server,
        virtual_service=vs["metadata"]["name"],
        virtual_service_resource_version=vs["metadata"].get("resourceVersion"),
        destination_rule=dr["metadata"]["name"],
        subsets=[
            SubsetStatus(s.get("name"), s.get("labels", {}), s.get("trafficPolicy") or None)
            for s in dr.get("spec", {}).get("subsets") or []
        ],
        traffic_policy=dr.get("spec", {}).get("trafficPolicy"),
        routes=routes,
        rollout=read_state(vs),
    )
