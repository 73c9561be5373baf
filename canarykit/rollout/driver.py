"""The rollout driver: `canarykit rollout run | step | status | abort | promote PLAN`.

Each phase of a plan is a runbook notebook executed by papermill into the release folder
(reports/SERVICE/RELEASE/NN-PHASE.ipynb). The driver's progress lives in the cluster, on a
coordination.k8s.io/v1 Lease named `canarykit-SERVICE` (annotation `canarykit.io/driver`),
so any runner on any machine can continue a release:

- Only the lease holder acts. A runner takes the lease only when it is free or expired, and
  every write names the resourceVersion it read, so two runners never both hold it; the state
  is written in the same update that renews the lease.
- Before a phase runs, it is recorded as `running` with the runner's id. A runner that finds
  a `running` phase (its runner died: SIGKILL, crash) executes that phase again. Runbooks are
  idempotent (setting the weight it already has writes nothing, and the audit log records
  only real changes), so nothing is applied twice.
- A FAIL, an error, or INCONCLUSIVE past the plan's `hold_steps` makes rollback the next
  phase; promote ends a release that passed every step.

`run` executes the whole plan in one process; `step` executes exactly the next due phase and
exits, for cron. `release.json` in the release folder is rewritten from the cluster's state
after every phase, and the HTML report is built when the release ends.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from canarykit.core import times
from canarykit.core.errors import BadInput, CanaryKitError, ClusterError, ExitCode
from canarykit.core.files import write_atomically
from canarykit.notify.channels import check_channels
from canarykit.notify.hooks import check_hooks
from canarykit.rollout import gates, runbook
from canarykit.rollout.parameters import RUNBOOK_PARAMETERS, packaged_runbooks
from canarykit.rollout.plan import PhaseSpec, Plan, expand, load_plan
from canarykit.rollout.target import PROMETHEUS_URL_ENV, resolve_prometheus_url
from canarykit.storage import records

DRIVER_ANNOTATION = "canarykit.io/driver"
DEFAULT_LEASE_SECONDS = 60
KERNEL = "python3"
FINAL = ("promoted", "rolled-back", "aborted", "failed")


class LeaseLost(ClusterError):
    """Another runner took the lease (ours expired): this runner must stop acting."""


now = times.utc_now
stamp = times.timestamp  # the driver's records use the one timestamp format


def parse_stamp(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return times.parse_timestamp(text)
    except ValueError:
        return None


def runner_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


# ---------------------------------------------------------------- driver state


@dataclass
class DriverState:
    """One release's progress, kept on the lease: enough for any runner to continue it."""

    release: str
    folder: str
    plan_digest: str
    started: str
    status: str = "in-progress"
    reason: str = ""
    finished: str | None = None
    cursor: int = 0  # the next planned phase (index into plan.expand)
    finish: str = ""  # "rollback" or "promote": that phase is due next, whatever the cursor
    finish_reason: str = ""
    aborted: bool = False
    inconclusive: int = 0  # INCONCLUSIVE verdicts in a row at the current analysis
    next_due: str | None = None
    current: dict[str, Any] | None = None  # {"index", "name", "status": running|done, ...}
    phases: list[dict[str, Any]] = field(default_factory=list)  # release.json's entries
    waiting: dict[str, Any] | None = None  # a gate being waited at: {"gate", "since"}
    hooks: list[dict[str, Any]] = field(default_factory=list)  # webhook answers, in order
    post_rollout: bool = False  # the post-rollout webhooks were called
    record: str = ""  # the release folder's URL when the plan's reports are in object storage

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DriverState:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})

    @property
    def done(self) -> bool:
        return self.status in FINAL


# ---------------------------------------------------------------- the lease


def lease_name(service: str) -> str:
    return f"canarykit-{service}"



def lease_expired(lease: dict[str, Any], at: datetime | None = None) -> bool:
    spec = lease.get("spec") or {}
    renewed = parse_stamp(spec.get("renewTime") or spec.get("acquireTime"))
    if not spec.get("holderIdentity") or renewed is None:
        return True
    seconds = spec.get("leaseDurationSeconds") or DEFAULT_LEASE_SECONDS
    return renewed + timedelta(seconds=seconds) < (at or now())


def lease_state(lease: dict[str, Any] | None) -> DriverState | None:
    raw = ((lease or {}).get("metadata", {}).get("annotations") or {}).get(DRIVER_ANNOTATION)
    if not raw:
        return None
    try:
        return DriverState.from_dict(json.loads(raw))
    except (ValueError, TypeError) as exc:
        raise ClusterError(f"the lease's {DRIVER_ANNOTATION} annotation is damaged: {exc}") from exc


class Lease:
    """Our hold on the lease; every write is an optimistic update on the last one we saw."""

    def __init__(self, api: Any, namespace: str, obj: dict[str, Any], runner: str,
                 seconds: int) -> None:
        self.api, self.namespace, self.obj = api, namespace, obj
        self.runner, self.seconds = runner, seconds
        self.lock = threading.Lock()
        self.lost = False

    @property
    def name(self) -> str:
        return self.obj["metadata"]["name"]

    def state(self) -> DriverState | None:
        return lease_state(self.obj)

    def write(self, state: DriverState | None = None, *, hold: bool = True) -> None:
        """Renew (and, given `state`, record it); LeaseLost when someone else wrote first."""
        from kubernetes.client.exceptions import ApiException

        from canarykit.cluster.client import api_error_text

        with self.lock:
            if self.lost:
                raise LeaseLost(f"lease {self.name} was taken over by another runner")
            body = json.loads(json.dumps(self.obj))
            spec = body.setdefault("spec", {})
            if hold:
                spec.update(holderIdentity=self.runner,
                            renewTime=times.timestamp(now(), timespec="microseconds"),
                            leaseDurationSeconds=self.seconds)
            else:
                for key in ("holderIdentity", "renewTime"):
                    spec.pop(key, None)
            if state is not None:
                annotations = dict(body["metadata"].get("annotations") or {})
                annotations[DRIVER_ANNOTATION] = json.dumps(state.to_dict(), sort_keys=True)
                body["metadata"]["annotations"] = annotations
            for attempt in range(2):
                try:
                    answer = self.api.replace_namespaced_lease(
                        self.name, self.namespace, body, _preload_content=False)
                    break
                except ApiException as exc:
                    if exc.status == 409 and attempt == 0 and self._still_ours(body):
                        continue  # an earlier write of ours landed unanswered: on its version
                    if exc.status == 409:
                        self.lost = True
                        raise LeaseLost(
                            f"lease {self.name} was taken over by another runner; stopping"
                        ) from exc
                    raise ClusterError(f"writing lease {self.name}: {api_error_text(exc)}") \
                        from exc
                except Exception as exc:  # connection errors from urllib3
                    raise ClusterError(f"writing lease {self.name}: {exc}") from exc
            self.obj = json.loads(answer.data)

    def _still_ours(self, body: dict[str, Any]) -> bool:
        """After a conflict: whether the lease still names this runner as holder, so the
        conflict was with our own write whose answer was lost (a timeout), not another
        runner's. Then `body` is moved onto the current version, to be written again."""
        try:
            current = json.loads(self.api.read_namespaced_lease(
                self.name, self.namespace, _preload_content=False).data)
        except Exception:
            return False
        if (current.get("spec") or {}).get("holderIdentity") != self.runner:
            return False
        body["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
        self.obj = current
        return True

    def release(self) -> None:
        """Let the next runner act at once instead of waiting for the lease to expire."""
        if not self.lost:
            with contextlib.suppress(CanaryKitError):
                self.write(hold=False)


def read_lease(kube: Any, service: str) -> dict[str, Any] | None:
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    from canarykit.cluster.client import api_error_text

    api = client.CoordinationV1Api(kube.api)
    try:
        return json.loads(api.read_namespaced_lease(
            lease_name(service), kube.namespace, _preload_content=False).data)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise ClusterError(f"reading lease {lease_name(service)}: {api_error_text(exc)}") \
            from exc


def acquire_lease(kube: Any, service: str, runner: str,
                  seconds: int) -> tuple[Lease | None, dict[str, Any] | None]:
    """(our Lease, None) when we hold it now, else (None, the lease as another holds it)."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    from canarykit.cluster.client import api_error_text

    api = client.CoordinationV1Api(kube.api)
    name = lease_name(service)
    moment = times.timestamp(now(), timespec="microseconds")
    found = read_lease(kube, service)
    try:
        if found is None:
            body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": name, "namespace": kube.namespace},
                    "spec": {"holderIdentity": runner, "leaseDurationSeconds": seconds,
                             "acquireTime": moment, "renewTime": moment,
                             "leaseTransitions": 0}}
            answer = api.create_namespaced_lease(kube.namespace, body, _preload_content=False)
        else:
            spec = found.get("spec") or {}
            holder = spec.get("holderIdentity")
            if holder and holder != runner and not lease_expired(found):
                return None, found
            body = json.loads(json.dumps(found))
            body["spec"] = {**spec, "holderIdentity": runner, "leaseDurationSeconds": seconds,
                            "acquireTime": moment, "renewTime": moment,
                            "leaseTransitions": (spec.get("leaseTransitions") or 0)
                            + int(holder != runner)}
            answer = api.replace_namespaced_lease(name, kube.namespace, body,
                                                  _preload_content=False)
    except ApiException as exc:
        if exc.status == 409:  # another runner created or took it between our read and write
            return None, read_lease(kube, service)
        raise ClusterError(f"taking lease {name}: {api_error_text(exc)}") from exc
    return Lease(api, kube.namespace, json.loads(answer.data), runner, seconds), None


@contextlib.contextmanager
def keeping(lease: Lease) -> Iterator[None]:
    """Renew the lease in the background (every third of its duration) while a phase runs."""
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(max(lease.seconds / 3, 0.5)):
            try:
                lease.write()
            except LeaseLost:
                return
            except Exception:  # a passing network problem: try again at the next tick
                continue

    thread = threading.Thread(target=renew, name="lease-renewal", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def holder_text(lease: dict[str, Any] | None) -> str:
    spec = (lease or {}).get("spec") or {}
    renewed = parse_stamp(spec.get("renewTime"))
    until = ""
    if renewed:
        seconds = spec.get("leaseDurationSeconds") or 0
        until = f" until {stamp(renewed + timedelta(seconds=seconds))}"
    return f"{spec.get('holderIdentity') or 'nobody'}{until}"


# ---------------------------------------------------------------- the context of a command


@dataclass
class Driver:
    """What every command needs: the plan, its phases, the cluster, where things go."""

    plan: Plan
    phases: list[PhaseSpec]
    kube: Any
    runbooks: Path
    reports: Path
    kubeconfig: str  # absolute path the driver and the notebooks both use ("" = the default)
    prometheus_url: str  # the plan's, else $CANARYKIT_PROMETHEUS_URL ("" = none given)
    lease_seconds: int = DEFAULT_LEASE_SECONDS
    runner: str = field(default_factory=runner_id)
    say: Callable[[str], None] = field(default=lambda text: print(text, flush=True))
    notifier: Any = None  # the release's message sender, made on the first message
    notifier_folder: str = ""
    record: str = ""  # the plan's reports URL (object storage); `reports` is then its local copy


def absolute_kubeconfig(kubeconfig: str) -> str:
    """The plan's kubeconfig, else $KUBECONFIG (a path list, as kubectl reads it), with every
    path absolute (relative to where the command runs), so the notebooks use the same files;
    "" leaves ~/.kube/config or the in-cluster config to the client, as kubectl would."""
    chosen = kubeconfig or os.environ.get("KUBECONFIG", "")
    return os.pathsep.join(str(Path(path).expanduser().resolve())
                           for path in chosen.split(os.pathsep) if path)


# Runbooks that query Prometheus: a plan with any of them needs a Prometheus URL.
PROMETHEUS_RUNBOOKS = ("preflight", "analyze", "shadow")


def require_prometheus(driver: Driver) -> None:
    """Refuse, before anything changes, a plan whose phases query Prometheus without a URL."""
    needing = [spec.name for spec in driver.phases if spec.runbook in PROMETHEUS_RUNBOOKS]
    if needing and not driver.prometheus_url:
        raise BadInput("prometheus.url", "", f"is required (phases {', '.join(needing)} query "
                       f"Prometheus): give it in the plan or set ${PROMETHEUS_URL_ENV}")


def open_driver(args: argparse.Namespace, *, executes: bool = False) -> Driver:
    """Load and check the plan and the runbooks it needs, then connect: BadInput on a bad plan.
    `executes`: the command runs the plan's phases, so their Prometheus must be given."""
    from canarykit.cluster import client as cluster

    plan = load_plan(args.plan)
    phases = expand(plan)
    runbooks = Path(args.runbooks or packaged_runbooks()).resolve()
    kubeconfig = absolute_kubeconfig(plan.kubeconfig)
    record = records.check_url("reports", plan.reports) if records.is_url(plan.reports) else ""
    reports = records.scratch_root(record) if record else Path(plan.reports).resolve()
    driver = Driver(plan, phases, None, runbooks, reports, kubeconfig,
                    resolve_prometheus_url(plan.prometheus.url), args.lease_seconds,
                    record=record)
    check_runbooks(driver)
    if executes:
        require_prometheus(driver)
        check_channels(driver.plan.notifications)  # a missing secret fails before anything
        check_hooks(driver.plan.webhooks)
    driver.kube = cluster.connect(kubeconfig or None, plan.context or None, plan.namespace)
    return driver


def terminal_phase(kind: str, reason: str = "") -> PhaseSpec:
    if kind == "rollback":
        return PhaseSpec("rollback", "rollback", {"reason": safe_text(reason)})
    return PhaseSpec("promote", "promote")


def safe_text(text: str) -> str:
    """A reason passed on as a parameter, unless it looks like a credential."""
    try:
        runbook.check_parameters({"reason": text})
    except BadInput:
        return "(withheld: the reason looked like a credential)"
    return text


def check_runbooks(driver: Driver) -> None:
    """Every runbook the plan needs exists and declares every parameter the driver passes.

    The packaged runbooks are checked against their declaration (`RUNBOOK_PARAMETERS`, which a
    test holds the notebooks to), so status, abort and promote never import papermill; only a
    custom --runbooks folder is read with papermill."""
    packaged = driver.runbooks.resolve() == packaged_runbooks().resolve()
    needed = [spec for spec in [*driver.phases, terminal_phase("rollback"),
                                terminal_phase("promote")] if not spec.gate]
    declared: dict[str, Collection[str]] = {}
    for spec in needed:
        path = driver.runbooks / f"{spec.runbook}.ipynb"
        if spec.runbook not in declared:
            if not path.is_file():
                raise BadInput("runbooks", str(driver.runbooks),
                               f"has no {spec.runbook}.ipynb, which phase {spec.name} needs")
            declared[spec.runbook] = (
                RUNBOOK_PARAMETERS.get(spec.runbook, ()) if packaged
                else runbook.import_papermill().inspect_notebook(str(path)))
        names = {**common_parameters(driver, "", Path(".")), **spec.parameters}
        runbook.check_parameters(names)
        for name in names:
            if name not in declared[spec.runbook]:
                raise BadInput(f"{spec.name}.{name}", names[name],
                               f"is not a parameter of runbooks/{spec.runbook}.ipynb")


def common_parameters(driver: Driver, release: str, folder: Path) -> dict[str, Any]:
    plan = driver.plan
    return {
        "service": plan.service,
        "namespace": plan.namespace,
        "stable": plan.stable,
        "canary": plan.canary,
        "router": plan.router,
        "reporter": plan.metrics.reporter,
        "version_label": plan.metrics.version_label,
        "routes": ",".join(plan.routes),
        "kubeconfig": driver.kubeconfig,
        "context": plan.context,
        "prometheus_url": driver.prometheus_url,
        "prometheus_bearer_token_env": plan.prometheus.bearer_token_env,
        "audit_log": str(folder / "audit.jsonl"),
        "release": release,
    }


# ---------------------------------------------------------------- the release folder


def start_release(driver: Driver) -> DriverState:
    """A new release: its folder with plan.yaml and an empty audit log, and its state."""
    plan = driver.plan
    started = now()
    base = plan.release or f"{plan.canary}-{times.compact(started)}"
    release, number = base, 1
    while (driver.reports / plan.service / release).exists() or (
            driver.record and records.exists(records.join(driver.record, plan.service,
                                                          release))):
        number += 1
        release = f"{base}-{number}"
    folder = driver.reports / plan.service / release
    folder.mkdir(parents=True)
    (folder / "plan.yaml").write_text(
        yaml.safe_dump(plan.to_dict(), sort_keys=False), encoding="utf-8")
    (folder / "audit.jsonl").touch()
    return DriverState(release=release, folder=str(folder), plan_digest=plan.digest(),
                       started=stamp(started), next_due=stamp(started),
                       record=records.join(driver.record, plan.service, release)
                       if driver.record else "")


def bring_local(driver: Driver, state: DriverState) -> None:
    """A release recorded in object storage: its folder on this machine (where the runner
    that started it wrote is elsewhere), brought up to date from the store."""
    if state.record:
        state.folder = str(driver.reports / driver.plan.service / state.release)
        records.pull(state.record, Path(state.folder))


def store_record(driver: Driver, state: DriverState | None) -> None:
    """Send what changed in the release folder to object storage (nothing for a folder)."""
    if state is not None and state.record and Path(state.folder).is_dir():
        records.push(Path(state.folder), state.record)


def check_record_store(driver: Driver) -> None:
    """Before a command that may change the cluster: the store takes writes (BadInput, and
    nothing changed, when it does not)."""
    if driver.record:
        records.probe(driver.record)


def finish(driver: Driver, lease: Lease, state: DriverState | None) -> None:
    """The end of a command that held the lease: messages sent, the record stored, then the
    lease let go, so the next runner finds the record complete."""
    try:
        with keeping(lease):
            gates.finish_messages(driver)
            store_record(driver, state)
    finally:
        lease.release()


def release_document(driver: Driver, state: DriverState) -> dict[str, Any]:
    plan = driver.plan
    return {"service": plan.service, "namespace": plan.namespace, "release": state.release,
            "stable": plan.stable, "canary": plan.canary, "started": state.started,
            "finished": state.finished, "status": state.status, "reason": state.reason,
            "plan": "plan.yaml", "phases": state.phases, "webhooks": state.hooks,
            "notifications": gates.NOTIFICATION_LOG if driver.plan.notifications else None}


def write_release(driver: Driver, state: DriverState) -> Path:
    """Rewrite release.json from the state (atomically: a reader never sees half a file)."""
    folder = Path(state.folder)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "release.json"
    write_atomically(target, json.dumps(release_document(driver, state), indent=2) + "\n",
                     0o644)
    return target


def build_report(driver: Driver, state: DriverState) -> Path | None:
    from canarykit.rollout import report

    try:
        return report.build_report(Path(state.folder))
    except Exception as exc:  # the release is over either way; say why there is no report
        driver.say(f"the report could not be built: {type(exc).__name__}: {exc}")
        return None


# ---------------------------------------------------------------- executing one phase


@contextlib.contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables for the notebook kernel (it inherits ours)."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def kernel_stderr(path: Path) -> Iterator[None]:
    """Send what the kernels write to stderr (their startup warnings) to a log file in the
    release folder, so the progress display stays one line per phase."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "ab") as log:
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def execute(driver: Driver, state: DriverState, spec: PhaseSpec, notebook: Path) -> dict[str, Any]:
    """Run the runbook into `notebook`; what it recorded: outcome, verdict, reason, error.
    The kernel works in the release folder; every path it is given is already absolute."""
    papermill = runbook.import_papermill()

    folder = Path(state.folder)
    parameters = {**common_parameters(driver, state.release, folder), **spec.parameters}
    env = {"CANARYKIT_AUDIT_LOG": str(folder / "audit.jsonl")}
    error = None
    try:
        with environment(env), kernel_stderr(folder / "kernels.log"):
            papermill.execute_notebook(
                str(driver.runbooks / f"{spec.runbook}.ipynb"), str(notebook),
                parameters=parameters, kernel_name=KERNEL, cwd=str(folder),
                progress_bar=False, log_output=False, request_save_on_cell_execute=True)
    except papermill.PapermillExecutionError as exc:
        error = f"{exc.ename}: {exc.evalue}"
    except Exception as exc:  # the kernel died, the notebook could not be written, ...
        error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    result = None
    if notebook.is_file():
        with contextlib.suppress(Exception):
            result, left = runbook.read_notebook(notebook)
            error = error or left
    if result is None:
        return {"outcome": "error", "verdict": None,
                "error": error or "the runbook recorded no result", "reason": ""}
    outcome = "ok" if result.outcome is runbook.Outcome.OK and not error else "error"
    judgements = (result.decision or {}).get("judgements") or []
    return {"outcome": outcome, "verdict": result.verdict,
            "error": None if outcome == "ok" else (result.error or error),
            "reason": result.reason, "weights": result.weights,
            "judgements": [{"judge": j.get("judge"), "verdict": j.get("verdict")}
                           for j in judgements if isinstance(j, dict)]}


def settle(state: DriverState, spec: PhaseSpec, record: dict[str, Any], hold_steps: int,
           at: datetime) -> None:
    """Decide what comes after a phase, from its outcome and verdict."""
    outcome, verdict = record["outcome"], record.get("verdict")
    why = record.get("error") or record.get("reason") or ""
    due = stamp(at)
    if spec.runbook == "rollback":
        if outcome == "ok":
            _end(state, "aborted" if state.aborted else "rolled-back", state.finish_reason, at)
        else:
            _end(state, "failed", f"rollback failed: {why}", at)
        return
    if spec.runbook == "promote" and state.finish in ("", "promote"):
        if outcome == "ok":
            _end(state, "promoted", state.finish_reason or "every step passed", at)
        else:
            _roll_back(state, f"promote failed: {why}", due)
        return
    if spec.judged and outcome == "ok" and verdict not in ("PASS", "FAIL", "INCONCLUSIVE"):
        verdict, why = "INCONCLUSIVE", why or "the runbook recorded no decision"
    if spec.name == "preflight" and (outcome == "error" or verdict != "PASS"):
        # nothing was changed yet: nothing to roll back
        _end(state, "failed", f"preflight {verdict or 'failed'}: {why}", at)
    elif outcome == "error":
        _roll_back(state, f"phase {spec.name} failed: {why}", due)
    elif spec.judged and verdict == "FAIL":
        _roll_back(state, f"{spec.name}: FAIL: {why}", due)
    elif spec.judged and verdict == "INCONCLUSIVE":
        state.inconclusive += 1
        if state.inconclusive > hold_steps:
            _roll_back(state, f"{spec.name}: INCONCLUSIVE {state.inconclusive} times in a row "
                              f"(hold_steps {hold_steps}): {why}", due)
        else:
            state.next_due = due  # hold: analyse again
    else:
        state.cursor += 1
        state.inconclusive = 0
        state.next_due = stamp(at + timedelta(seconds=spec.pause))


def _roll_back(state: DriverState, reason: str, due: str) -> None:
    state.finish, state.finish_reason, state.next_due = "rollback", reason, due


def _end(state: DriverState, status: str, reason: str, at: datetime) -> None:
    state.status, state.reason, state.finished, state.next_due = status, reason, stamp(at), None


def next_phase(driver: Driver, state: DriverState) -> PhaseSpec:
    if state.finish:
        return terminal_phase(state.finish, state.finish_reason)
    if state.cursor >= len(driver.phases):
        raise BadInput("PLAN", driver.plan.service, f"changed since release {state.release} "
                       f"started: it has no phase {state.cursor + 1} any more; finish the release "
                       "with `canarykit rollout abort` or `promote`")
    spec = driver.phases[state.cursor]
    if state.inconclusive:
        spec = replace(spec, name=f"{spec.name}-hold-{state.inconclusive}")
    return spec


def hooks_before(driver: Driver, lease: Lease, state: DriverState,
                 spec: PhaseSpec) -> dict[str, Any] | None:
    """The pre-rollout webhooks before the first phase, the pre-step ones before a phase that
    moves traffic; the release.json entry of a refusal (None: go ahead)."""
    if spec.name == "preflight" and not state.phases:
        kind = "pre-rollout"
    elif spec.runbook in gates.TRAFFIC_RUNBOOKS and not state.finish:
        kind = "pre-step"
    else:
        return None
    if not driver.plan.hooks(kind):
        return None
    calls = gates.call_hooks(driver, state, kind, phase=spec.name)
    if calls.ok:
        return None
    at = now()
    entry = {"index": len(state.phases) + 1, "name": f"{kind}-webhooks", "runbook": None,
             "gate": kind, "notebook": None, "started": calls.entries[0]["at"],
             "finished": stamp(at), "outcome": "ok", "verdict": "REFUSED",
             "reason": calls.reason, "actor": driver.kube.actor, "runner": driver.runner}
    state.phases.append(entry)
    if kind == "pre-rollout":  # nothing has moved: nothing to roll back
        _end(state, "failed", f"pre-rollout: {calls.reason}", at)
        gates.tell(driver, state, "error", phase=spec.name, reason=state.reason)
    else:  # held like an INCONCLUSIVE analysis: asked again, then rolled back
        settle(state, replace(spec, judged=True), {"outcome": "ok", "verdict": "INCONCLUSIVE",
                                                  "reason": calls.reason},
               driver.plan.inconclusive.hold_steps, at)
        gates.tell(driver, state, "held", phase=spec.name, verdict="INCONCLUSIVE",
                   reason=calls.reason)
    lease.write(state)
    write_release(driver, state)
    return entry


def run_phase(driver: Driver, lease: Lease, state: DriverState) -> dict[str, Any]:
    """Execute the next phase with the crash-safe protocol; the finished release.json entry."""
    spec = next_phase(driver, state)
    refused = hooks_before(driver, lease, state, spec)
    if refused is not None:
        return refused
    index = len(state.phases) + 1
    notebook = Path(state.folder) / f"{index:02d}-{spec.name}.ipynb"
    entry: dict[str, Any] = {
        "index": index, "name": spec.name, "runbook": spec.runbook, "notebook": notebook.name,
        "started": stamp(), "finished": None, "outcome": None, "verdict": None,
        "actor": driver.kube.actor, "runner": driver.runner,
    }
    state.phases.append(entry)
    state.current = {"index": index, "name": spec.name, "status": "running",
                     "runner": driver.runner, "started": entry["started"]}
    lease.write(state)  # from here on, a runner that finds this phase running re-executes it
    write_release(driver, state)
    began = time.monotonic()
    with keeping(lease):
        record = execute(driver, state, spec, notebook)
    finished = now()
    entry.update(finished=stamp(finished), outcome=record["outcome"], verdict=record["verdict"],
                 duration_s=round(time.monotonic() - began, 1))
    if record.get("error"):
        entry["error"] = record["error"]
    if record.get("reason"):
        entry["reason"] = record["reason"]
    settle(state, spec, record, driver.plan.inconclusive.hold_steps, finished)
    state.current = {**state.current, "status": "done", "finished": entry["finished"]}
    lease.write(state)  # the phase's completion, recorded where every runner looks
    write_release(driver, state)
    announce(driver, state, spec, record)
    return entry


def announce(driver: Driver, state: DriverState, spec: PhaseSpec,
             record: dict[str, Any]) -> None:
    """The messages a finished phase calls for (sent in the background)."""
    name = spec.name
    why = record.get("error") or record.get("reason") or ""
    if record["outcome"] == "error":
        gates.tell(driver, state, "error", phase=name, reason=why)
    elif spec.judged:
        kind, judges = gates.step_message(spec, record)
        gates.tell(driver, state, kind, phase=name, verdict=record.get("verdict"),
                   reason=why, judges=judges)
    if state.status == "promoted":
        gates.tell(driver, state, "promoted", phase=name, reason=state.reason)
    elif state.status in ("rolled-back", "aborted"):
        gates.tell(driver, state, "rolled-back", phase=name, reason=state.reason)
    elif state.status == "failed":
        gates.tell(driver, state, "error", phase=name, reason=state.reason)


def run_gate(driver: Driver, lease: Lease, state: DriverState,
             spec: PhaseSpec) -> dict[str, Any] | None:
    """Look at an approve or confirm-promotion gate once: its release.json entry when it
    opened or closed, None while it is still waiting (the next look is state.next_due)."""
    at = now()
    look = gates.check_approval if spec.gate == "approve" else gates.check_confirmation
    check = look(driver, state, spec, at)
    if check.status == "waiting":
        first = state.waiting is None
        if first:
            state.waiting = {"gate": spec.name, "since": stamp(at)}
            driver.say(check.reason)
        state.next_due = stamp(check.due)
        lease.write(state)
        write_release(driver, state)
        if first:
            gates.tell(driver, state, "waiting", phase=spec.name, reason=check.reason)
        return None
    opened = check.status == "open"
    verdict = {"approve": "APPROVED" if opened else "REJECTED"}.get(
        spec.gate, "CONFIRMED" if opened else "REFUSED")
    if "approval" not in check.entry and spec.gate == "approve":
        verdict = "TIMEOUT"
    since = (state.waiting or {}).get("since") or stamp(at)
    entry = {"index": len(state.phases) + 1, "name": spec.name, "runbook": None,
             "gate": spec.gate, "notebook": None, "started": since, "finished": stamp(at),
             "duration_s": round((at - parse_stamp(since)).total_seconds(), 1),
             "outcome": "ok", "verdict": verdict, "reason": check.reason,
             "actor": driver.kube.actor, "runner": driver.runner, **check.entry}
    state.phases.append(entry)
    state.waiting = None
    if opened:
        state.cursor += 1
        state.inconclusive = 0
        state.next_due = stamp(at + timedelta(seconds=spec.pause))
    else:
        _roll_back(state, f"{spec.name}: {check.reason}", stamp(at))
    lease.write(state)
    write_release(driver, state)
    if spec.gate == "approve":
        gates.tell(driver, state, "approved" if opened else "rolled-back", phase=spec.name,
                   verdict=verdict, reason=check.reason)
    return entry


def after_release(driver: Driver, lease: Lease, state: DriverState) -> None:
    """Once a release is over: its post-rollout webhooks (once; their answers change nothing
    but are kept in the release)."""
    if state.post_rollout or not driver.plan.hooks("post-rollout"):
        return
    gates.call_hooks(driver, state, "post-rollout", phase=state.status)
    state.post_rollout = True
    lease.write(state)
    write_release(driver, state)


def recover(driver: Driver, state: DriverState) -> None:
    """A phase left `running` by a runner that died: mark it interrupted; it runs again next."""
    current = state.current or {}
    if current.get("status") != "running":
        return
    for entry in state.phases:
        if entry["index"] == current.get("index") and entry.get("outcome") is None:
            entry.update(outcome="error", finished=stamp(),
                         error=f"interrupted: runner {current.get('runner')} stopped before "
                               "recording the phase's completion; it is executed again")
    state.current = {**current, "status": "interrupted"}
    driver.say(f"phase {current.get('name')} was interrupted (runner {current.get('runner')}); "
               "executing it again")


def phase_line(entry: dict[str, Any]) -> str:
    shown = entry.get("verdict") or ("ok" if entry.get("outcome") == "ok" else "ERROR")
    seconds = entry.get("duration_s") or 0
    line = f"{entry['index']:>3}  {entry['name']:<24} {shown:<13} {seconds:>7.1f}s"
    detail = entry.get("error") or (entry.get("reason") if shown not in ("ok", "PASS") else "")
    return f"{line}  {detail}" if detail else line


# ---------------------------------------------------------------- one step


def current_state(driver: Driver, lease: Lease, *, new_when_done: bool) -> DriverState:
    """The release in progress, else a new one (after a finished one: when `new_when_done`,
    or when the plan changed since)."""
    state = lease.state()
    fresh = state is None or (state.done and (new_when_done
                                              or state.plan_digest != driver.plan.digest()))
    if fresh:
        state = start_release(driver)
        lease.write(state)
        write_release(driver, state)
        driver.say(f"release {state.release} of {driver.plan.service} ({driver.plan.canary} "
                   f"over {driver.plan.stable}): {state.record or state.folder}")
        gates.tell(driver, state, "started",
                   reason=f"{driver.plan.canary} over {driver.plan.stable}, "
                          f"{len(driver.phases)} phases")
    else:
        bring_local(driver, state)
        if state.plan_digest != driver.plan.digest() and not state.done:
            driver.say(f"note: the plan changed since release {state.release} started; "
                       "continuing it with the plan as it is now")
    return state


def step_once(driver: Driver, lease: Lease, state: DriverState) -> dict[str, Any] | None:
    """Execute the next phase if it is due; its entry, or None when it is not due yet."""
    recover(driver, state)
    due = parse_stamp(state.next_due)
    if state.current and state.current.get("status") == "interrupted":
        due = None  # run the interrupted phase again now
    if due and due > now():
        return None
    spec = next_phase(driver, state)
    store_record(driver, state)  # the record so far is stored before anything changes
    entry = (run_gate(driver, lease, state, spec) if spec.gate
             else run_phase(driver, lease, state))
    store_record(driver, state)
    if state.done:
        with keeping(lease):  # the lease stays ours while webhooks are called and the report built
            after_release(driver, lease, state)
            build_report(driver, state)
            store_record(driver, state)
    return entry


def conclude(driver: Driver, state: DriverState) -> None:
    """The last lines of a release: how it ended and where its report is."""
    driver.say(f"release {state.release}: {state.status} ({state.reason})")
    report = Path(state.folder) / "report.html"
    if report.exists():
        driver.say(f"report: {records.join(state.record, report.name) if state.record else report}")


def finished_release(driver: Driver, state: DriverState) -> None:
    """A release that is over; its report is built again if a runner died before building it."""
    if Path(state.folder).is_dir() and not (Path(state.folder) / "report.html").exists():
        write_release(driver, state)
        build_report(driver, state)
    conclude(driver, state)


# ---------------------------------------------------------------- commands


def take_lease(driver: Driver, otherwise: str) -> Lease | None:
    """The driver's lease, or None (said, with who holds it) when another runner has it."""
    lease, other = acquire_lease(driver.kube, driver.plan.service, driver.runner,
                                 driver.lease_seconds)
    if lease is None:
        driver.say(f"another runner holds lease {lease_name(driver.plan.service)}: "
                   f"{holder_text(other)}; {otherwise}")
    return lease


def cmd_run(args: argparse.Namespace) -> int:
    """The whole plan in this process: phase after phase until promoted or rolled back."""
    driver = open_driver(args, executes=True)
    check_record_store(driver)
    lease = take_lease(driver, "not starting")
    if lease is None:
        return ExitCode.FAILED
    state = None
    try:
        state = current_state(driver, lease, new_when_done=True)
        driver.say(f"{'#':>3}  {'phase':<24} {'verdict':<13} {'duration':>8}")
        while not state.done:
            entry = step_once(driver, lease, state)
            if entry is not None:
                driver.say(phase_line(entry))
                continue
            wait = (parse_stamp(state.next_due) - now()).total_seconds()
            if not state.waiting:  # a gate said once what it waits for
                driver.say(f"waiting {wait:.0f}s until {state.next_due}")
            with keeping(lease):
                time.sleep(max(wait, 0) + 0.05)
    finally:
        finish(driver, lease, state)
    conclude(driver, state)
    return ExitCode.OK if state.status == "promoted" else ExitCode.FAILED


def cmd_step(args: argparse.Namespace) -> int:
    """At most one phase: the next due one. Safe from cron, from several machines at once."""
    driver = open_driver(args, executes=True)
    check_record_store(driver)
    lease = take_lease(driver, "nothing to do")
    if lease is None:
        return ExitCode.OK
    state = None
    try:
        state = current_state(driver, lease, new_when_done=args.new_release)
        if state.done:
            finished_release(driver, state)
            return ExitCode.OK
        entry = step_once(driver, lease, state)
        if entry is None:
            driver.say(f"release {state.release}: next phase {next_phase(driver, state).name} "
                       f"is due at {state.next_due}; nothing to do now")
        else:
            driver.say(phase_line(entry))
            if state.done:
                conclude(driver, state)
            else:
                driver.say(f"next: {next_phase(driver, state).name} due at {state.next_due}")
    finally:
        finish(driver, lease, state)
    return ExitCode.OK


def _operator_command(args: argparse.Namespace, kind: str) -> int:
    """abort/promote: wait for the lease, then run rollback/promote now."""
    driver = open_driver(args)
    check_record_store(driver)
    deadline = time.monotonic() + args.wait
    while True:
        lease, other = acquire_lease(driver.kube, driver.plan.service, driver.runner,
                                     driver.lease_seconds)
        if lease is not None:
            break
        if time.monotonic() >= deadline:
            driver.say(f"another runner holds lease {lease_name(driver.plan.service)}: "
                       f"{holder_text(other)}; try again (or wait longer with --wait)")
            return ExitCode.FAILED
        time.sleep(1)
    state = None
    try:
        state = lease.state()
        if state is not None and state.status == "failed" and kind == "abort":
            state.status, state.finished = "in-progress", None  # roll back again
        if state is None or state.done:
            what = "no release" if state is None else f"release {state.release} is {state.status}"
            driver.say(f"{what}; nothing to {kind}")
            return ExitCode.FAILED
        bring_local(driver, state)
        recover(driver, state)
        state.waiting = None  # a person decided: no gate is waited at any more
        who = driver.kube.actor
        if kind == "abort":
            state.finish, state.aborted = "rollback", True
            state.finish_reason = f"aborted by {who}"
        else:
            state.finish, state.finish_reason = "promote", f"promoted by {who}, skipping the rest"
        state.next_due = stamp()
        entry = step_once(driver, lease, state)
        if entry:
            driver.say(phase_line(entry))
    finally:
        finish(driver, lease, state)
    conclude(driver, state)
    return ExitCode.OK if state.status in ("promoted", "aborted") else ExitCode.FAILED


def cmd_approve(args: argparse.Namespace) -> int:
    """Open (or, with --reject, close) the approve gate of the release in progress: the
    VirtualService annotations a runner reads, set with the caller's identity."""
    from canarykit.cluster import client as cluster

    if args.reason is not None and (len(args.reason) > gates.ONE_LINE or "\n" in args.reason):
        raise BadInput("--reason", args.reason[:80], f"must be one line of at most "
                       f"{gates.ONE_LINE} characters")
    driver = open_driver(args)
    state = lease_state(read_lease(driver.kube, driver.plan.service))
    if state is None or state.done:
        what = "no release" if state is None else f"release {state.release} is {state.status}"
        driver.say(f"{what}; nothing to {'reject' if args.reject else 'approve'}")
        return ExitCode.FAILED
    route = gates.routing_object(driver)
    who = driver.kube.actor or "unknown"
    cluster.annotate(driver.kube, route["kind"], route["metadata"]["name"],
                     gates.approval_patch(state.release, reject=args.reject, by=who,
                                          reason=args.reason or ""))
    waiting = (f"; the gate {state.waiting['gate']} opens at the next look"
               if state.waiting else "; it applies when the release reaches its approve step")
    driver.say(f"release {state.release} {'rejected' if args.reject else 'approved'} by {who}"
               + waiting)
    return ExitCode.OK


def cmd_abort(args: argparse.Namespace) -> int:
    """Roll back now (rollback.ipynb); the release ends `aborted`."""
    return _operator_command(args, "abort")


def cmd_promote(args: argparse.Namespace) -> int:
    """Skip the remaining steps: promote.ipynb now."""
    return _operator_command(args, "promote")


def status_report(driver: Driver) -> dict[str, Any]:

    lease = read_lease(driver.kube, driver.plan.service)
    state = lease_state(lease)
    out: dict[str, Any] = {
        "service": driver.plan.service, "namespace": driver.plan.namespace,
        "plan": {"digest": driver.plan.digest(),
                 "phases": [spec.name for spec in driver.phases]},
        "lease": {"name": lease_name(driver.plan.service),
                  "holder": ((lease or {}).get("spec") or {}).get("holderIdentity"),
                  "expired": lease is None or lease_expired(lease)},
        "release": None,
    }
    if state is not None:
        out["release"] = state.to_dict()
        try:
            out["release"]["next"] = None if state.done else next_phase(driver, state).name
        except BadInput as exc:
            out["release"]["next"] = f"none: {exc}"
        out["release"]["planChanged"] = state.plan_digest != driver.plan.digest()
    try:
        out["cluster"] = gates.routing_router(driver).status().to_dict()
    except CanaryKitError as exc:
        out["cluster"] = {"error": str(exc)}
    return out


def cmd_status(args: argparse.Namespace) -> int:
    """The plan, the release's state in the cluster, the phases done and the next one due."""
    driver = open_driver(args)
    report = status_report(driver)
    if args.output == "json":
        print(json.dumps(report, indent=2, default=str))
        return ExitCode.OK
    say = driver.say
    say(f"plan: {args.plan} ({len(driver.phases)} phases: {', '.join(report['plan']['phases'])})")
    holder = report["lease"]["holder"]
    say(f"lease {report['lease']['name']}: "
        + (f"held by {holder}" if holder and not report["lease"]["expired"] else "free"))
    release = report["release"]
    if release is None:
        say("no release yet: `canarykit rollout run` or `step` starts one")
    else:
        say(f"release {release['release']}: {release['status']}"
            + (f" ({release['reason']})" if release["reason"] else "")
            + f", folder {release['folder']}")
        for entry in release["phases"]:
            say(phase_line({**entry, "duration_s": entry.get("duration_s", 0)}))
        if release.get("waiting"):
            say(f"waiting at {release['waiting']['gate']} since {release['waiting']['since']}"
                + (": `canarykit rollout approve PLAN` (or --reject)"
                   if release["waiting"]["gate"] == "approve" else ""))
        if release["next"]:
            say(f"next: {release['next']} due at {release['next_due']}")
        if release["planChanged"]:
            say("note: the plan file changed since this release started")
    cluster = report.get("cluster") or {}
    if cluster.get("error"):
        say(f"cluster status unavailable: {cluster['error']}")
    for route in cluster.get("routes") or []:
        split = ", ".join(f"{d['subset']}={d['weight'] if d['weight'] is not None else 100}"
                          for d in route["destinations"])
        say(f"  http[{route['index']}] {route['name'] or '(unnamed)'}: {split}")
    return ExitCode.OK


COMMANDS = {
    "run": (cmd_run, "run the whole plan now, phase after phase, with automatic rollback"),
    "step": (cmd_step, "execute the next due phase and exit (for cron; one runner at a time)"),
    "status": (cmd_status, "show the plan, the release in the cluster and the next phase"),
    "abort": (cmd_abort, "roll back now (rollback.ipynb); the release ends aborted"),
    "promote": (cmd_promote, "skip the remaining steps and promote now (promote.ipynb)"),
    "approve": (cmd_approve, "approve (or --reject) the release at its approve step"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`rollout run|step|status|abort|promote|approve PLAN`, each a subcommand of its own."""
    commands = parser.add_subparsers(dest="rollout_command", required=True, metavar="COMMAND")
    for name, (handler, text) in COMMANDS.items():
        sub = commands.add_parser(name, help=text, description=text)
        sub.add_argument("plan", type=Path, metavar="PLAN", help="the rollout plan (YAML)")
        sub.add_argument("--runbooks", type=Path, default=None,
                         help="folder of runbook notebooks (default: the runbooks installed "
                         "with canarykit)")
        sub.add_argument("--lease-seconds", type=int, default=DEFAULT_LEASE_SECONDS,
                         metavar="N", help="how long the lease lasts without renewal "
                         f"(default {DEFAULT_LEASE_SECONDS})")
        if name in ("abort", "promote"):
            sub.add_argument("--wait", type=float, default=120.0, metavar="SECONDS",
                             help="how long to wait for a runner holding the lease "
                             "(default 120)")
        if name == "step":
            sub.add_argument("--new-release", action="store_true",
                             help="start a new release when the last one is over (by default "
                             "only a changed plan starts one)")
        if name == "status":
            sub.add_argument("--output", choices=("text", "json"), default="text")
        if name == "approve":
            sub.add_argument("--reject", action="store_true",
                             help="reject instead: the release is rolled back")
            sub.add_argument("--reason", default=None, metavar="TEXT",
                             help="one line kept with the decision in the audit chain")
        sub.set_defaults(rollout_handler=handler)


def run(args: argparse.Namespace) -> int:
    """Dispatch: OK promoted (or done), FAILED rolled back or not promoted; errors reach
    cli.main, which maps them (BadInput, a bad plan: BAD_INPUT)."""
    if args.lease_seconds < 1:
        raise BadInput("--lease-seconds", args.lease_seconds, "must be at least 1")
    return args.rollout_handler(args)


def main(argv: list[str] | None = None) -> int:
    """`python -m canarykit.rollout.driver ...`: `canarykit rollout ...`, through the CLI's
    own error handling and exit codes."""
    from canarykit.cli.main import main as cli_main

    return cli_main(["rollout", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
