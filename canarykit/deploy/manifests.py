"""`canarykit deploy render PLAN`: the manifests that run one plan on the cluster itself.

One CronJob per service runs `canarykit rollout step` every few minutes, as cron on a laptop
did: the Lease keeps one runner at a time, each run executes at most one phase and exits.
Around it: the plan in a ConfigMap, a ServiceAccount with a namespaced Role holding exactly
the verbs canarykit uses (nothing on Secrets), credentials from a Secret the user names
(environment and files, never notebook parameters), and a volume for the release folders,
which later runs continue.

The job's deadline is shorter than the schedule's shortest interval (minus the time a late
start may take), so a run always ends before the next is due; a plan whose longest phase
cannot fit is refused, naming the setting to change.

With `--argo` the same step runs from Argo Workflows instead of the CronJob (a WorkflowTemplate
and a CronWorkflow, see canarykit/deploy/argo.py): the pod parts below (container, security
contexts, volumes, credentials) are shared, so both runners run `rollout step` alike.
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from canarykit import __version__
from canarykit.core import names
from canarykit.core.durations import format_duration, parse_duration
from canarykit.core.errors import BadInput, ExitCode
from canarykit.deploy import cron
from canarykit.storage import records

DEFAULT_SCHEDULE = "*/5 * * * *"
DEFAULT_IMAGE = f"ghcr.io/canarykit/canarykit:{__version__}"
PLAN_DIR = "/etc/canarykit"
PLAN_FILE = "plan.yaml"
PLAN_PATH = f"{PLAN_DIR}/{PLAN_FILE}"
SCRATCH = "/scratch"  # the only writable path: papermill, the kernels, the release folders
SECRETS_DIR = "/var/run/secrets/canarykit"
RUN_AS = 10001
RESOURCES = {"requests": {"cpu": "250m", "memory": "512Mi"},
             "limits": {"cpu": "1", "memory": "1Gi"}}
KEEP_FINISHED_SECONDS = 3600
HISTORY = 3  # finished runs kept (successful and failed each)
PHASE_OVERHEAD_SECONDS = 30  # a kernel's start, papermill, the cluster calls of one phase
LABELS = {"app.kubernetes.io/name": "canarykit", "app.kubernetes.io/component": "rollout",
          "app.kubernetes.io/managed-by": "canarykit"}
# What `rollout step` does in the cluster, verb by verb (tests/deploy prove it is enough
# and that each rule a rollout uses is needed). `get` of the Istio objects is for re-reading
# on a 409 and settling a change a killed runner left unfinished. No plan step changes a
# DestinationRule yet, so there is no update on them. SelfSubjectReview (who am I, for the
# audit log) is cluster-scoped and granted to every authenticated user by system:basic-user.
ROLE_RULES = [
    {"apiGroups": ["networking.istio.io"], "resources": ["virtualservices"],
     "verbs": ["get", "list", "update"]},
    {"apiGroups": ["networking.istio.io"], "resources": ["destinationrules"],
     "verbs": ["get", "list"]},
    {"apiGroups": [""], "resources": ["services"], "verbs": ["get"]},
    {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["list"]},
    {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
     "verbs": ["get", "create", "update"]},
]
# With `router: gateway-api` the routing object is an HTTPRoute (or GRPCRoute) and each
# version a Service (read for its selector); nothing of Istio's is read or written.
GATEWAY_API_ROLE_RULES = [
    {"apiGroups": ["gateway.networking.k8s.io"], "resources": ["httproutes", "grpcroutes"],
     "verbs": ["get", "list", "update"]},
    *ROLE_RULES[2:],
]


def role_rules(router: str) -> list[dict[str, Any]]:
    """The Role of a plan's runner: its router's rules; both routers' when the plan leaves the
    router to be detected (finding out reads both APIs, and either may be the one)."""
    if router == "istio":
        return copy.deepcopy(ROLE_RULES)
    if router == "gateway-api":
        return copy.deepcopy(GATEWAY_API_ROLE_RULES)
    return copy.deepcopy([*ROLE_RULES[:2], *GATEWAY_API_ROLE_RULES])
# Where the libraries a runbook kernel loads keep their state, all under the scratch volume.
SCRATCH_ENV = {"HOME": SCRATCH, "JUPYTER_RUNTIME_DIR": f"{SCRATCH}/.jupyter/runtime",
               "JUPYTER_DATA_DIR": f"{SCRATCH}/.jupyter/data", "IPYTHONDIR": f"{SCRATCH}/.ipython",
               "XDG_CACHE_HOME": f"{SCRATCH}/.cache", "MPLCONFIGDIR": f"{SCRATCH}/.cache/mpl",
               "PYTHONDONTWRITEBYTECODE": "1"}


def _name(service: str) -> str:
    return f"canarykit-{service}"


def job_timing(schedule: str) -> dict[str, int]:
    """startingDeadlineSeconds and activeDeadlineSeconds for a schedule: a run that starts
    as late as allowed still ends before the next one is due."""
    interval = int(cron.shortest_interval(schedule).total_seconds())
    starting = max(10, min(60, interval // 4))
    return {"interval": interval, "starting": starting, "active": interval - starting}


def longest_phase(plan: Any) -> tuple[float, str]:
    """The longest a phase of the plan may take, and the setting that makes it so."""
    from canarykit.rollout.plan import expand

    longest, setting = parse_duration(plan.preflight.baseline_window), "preflight.baseline_window"
    for spec in expand(plan):
        parameters = spec.parameters
        if spec.runbook not in ("analyze", "shadow"):
            continue
        seconds = parse_duration(parameters["window"])
        name = "window"
        if parameters.get("until_verdict"):
            limit = parse_duration(parameters["max_duration"])
            seconds, name = max(seconds, limit), "max_duration"
        # each iteration of an analyze phase judges a window of its own
        iterations = parameters.get("iterations", 1) if spec.runbook == "analyze" else 1
        seconds *= iterations
        if seconds > longest:
            inherited = parameters[name] == getattr(plan.analysis, name)
            where = ("analysis" if spec.step is None or inherited
                     else f"steps[{spec.step}].analysis")
            longest, setting = seconds, f"{where}.{name}" + (
                f" times its {iterations} iterations" if iterations > 1 else "")
    return longest + PHASE_OVERHEAD_SECONDS, setting


@dataclass(frozen=True)
class Target:
    """What `render` checked: the plan (and its text, for the ConfigMap), where and how it runs,
    and the names every object shares."""

    plan: Any
    text: str
    image: str
    schedule: str
    secret: str
    reports_claim: str
    timing: dict[str, int]

    @property
    def name(self) -> str:
        return _name(self.plan.service)

    @property
    def namespace(self) -> str:
        return self.plan.namespace

    @property
    def labels(self) -> dict[str, str]:
        return {**LABELS, "app.kubernetes.io/instance": self.plan.service}

    def meta(self, name: str | None = None) -> dict[str, Any]:
        return {"name": name or self.name, "namespace": self.namespace,
                "labels": dict(self.labels)}


def check(plan_path: Path, *, image: str = DEFAULT_IMAGE, schedule: str = DEFAULT_SCHEDULE,
          secret: str = "", reports_claim: str = "") -> Target:
    """The plan and settings, checked: BadInput (naming the flag or plan field) when the plan
    cannot run on the cluster as it is."""
    from canarykit.rollout.plan import load_plan

    text = Path(plan_path).read_text(encoding="utf-8")
    plan = load_plan(plan_path)
    if plan.kubeconfig:
        raise BadInput("kubeconfig", plan.kubeconfig, "must be empty in a plan the cluster "
                       "runs: the job acts as its own service account (in-cluster config)")
    if not image or any(c.isspace() for c in image):
        raise BadInput("--image", image, "must be an image reference")
    for flag, value in (("--secret", secret), ("--reports-claim", reports_claim)):
        if value:
            names.check_dns_label(flag, value)
    stored = records.is_url(plan.reports)
    if stored and reports_claim:
        raise BadInput("--reports-claim", reports_claim, "is not used: the plan's reports are "
                       f"in object storage ({plan.reports}); leave it out")
    if not stored and not reports_claim:
        raise BadInput("--reports-claim", "", "is required: the release folders (executed "
                       "notebooks, audit chain, report) must outlive each run's pod; name a "
                       "PersistentVolumeClaim, or make the plan's reports an s3://, gs:// or "
                       "az:// URL")
    if not stored and Path(plan.reports).is_absolute():
        raise BadInput("reports", plan.reports, "must be a relative folder in a plan the "
                       f"cluster runs (it lands on the reports volume under {SCRATCH})")
    timing = job_timing(schedule)
    needed, setting = longest_phase(plan)
    if needed > timing["active"]:
        raise BadInput("--schedule", schedule,
                       f"runs every {format_duration(timing['interval'])} at the shortest, so a "
                       f"run must end within {format_duration(timing['active'])}, but {setting} "
                       f"lets a phase take up to {format_duration(math.ceil(needed))} (with "
                       f"{PHASE_OVERHEAD_SECONDS}s to start it): schedule less often or "
                       f"shorten {setting}")
    return Target(plan, text, image, schedule, secret, reports_claim, timing)


def render(plan_path: Path, *, image: str = DEFAULT_IMAGE, schedule: str = DEFAULT_SCHEDULE,
           secret: str = "", reports_claim: str = "", argo: bool = False) -> list[dict[str, Any]]:
    """The objects, in apply order; BadInput (naming the flag or plan field) when the plan
    cannot run on the cluster as it is. `argo`: Argo Workflows runs the step (its Role, a
    WorkflowTemplate and a CronWorkflow) instead of a CronJob."""
    target = check(plan_path, image=image, schedule=schedule, secret=secret,
                   reports_claim=reports_claim)
    if argo:
        from canarykit.deploy import argo as argo_workflows

        return [*base_objects(target), *argo_workflows.objects(target)]
    return [*base_objects(target), _cron_job(target)]


def base_objects(target: Target) -> list[dict[str, Any]]:
    """What every runner of the plan needs: its ServiceAccount, Role and RoleBinding, and the
    plan as a ConfigMap."""
    name, meta = target.name, target.meta
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta(),
         "automountServiceAccountToken": True},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": meta(),
         "rules": role_rules(target.plan.router)},
        role_binding(target, name),
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta(f"{name}-plan"),
         "data": {PLAN_FILE: target.text}},
    ]


def role_binding(target: Target, role: str) -> dict[str, Any]:
    """The RoleBinding of `role` to the plan's ServiceAccount."""
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": target.meta(role),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role},
            "subjects": [{"kind": "ServiceAccount", "name": target.name,
                          "namespace": target.namespace}]}


# ---------------------------------------------------------------- the pod, shared by runners


def container_security_context() -> dict[str, Any]:
    return {"runAsNonRoot": True, "runAsUser": RUN_AS, "runAsGroup": RUN_AS,
            "readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}


def pod_security_context() -> dict[str, Any]:
    return {"runAsNonRoot": True, "fsGroup": RUN_AS, "seccompProfile": {"type": "RuntimeDefault"}}


def volumes(target: Target) -> list[dict[str, Any]]:
    """The pod's volumes: the plan, scratch, the release folders and (with --secret) the
    credentials."""
    found: list[dict[str, Any]] = [
        {"name": "plan", "configMap": {"name": f"{target.name}-plan"}},
        {"name": "scratch", "emptyDir": {"sizeLimit": "1Gi"}},
    ]
    if target.reports_claim:  # else the reports are in object storage, copied via scratch
        found.append({"name": "reports",
                      "persistentVolumeClaim": {"claimName": target.reports_claim}})
    if target.secret:
        found.append({"name": "credentials", "secret": {"secretName": target.secret,
                                                         "defaultMode": 0o440}})
    return found


def container(target: Target, args: list[str], *, runs_phases: bool = True) -> dict[str, Any]:
    """The canarykit container running `canarykit ARGS`: non-root, read-only root filesystem,
    every writable path a volume. `runs_phases`: it runs the plan's phases, so it gets the
    release folders and every key of the named Secret as an environment variable and a file
    (for *_file settings); without, it reads only the plan and the cluster."""
    mounts: list[dict[str, Any]] = [
        {"name": "plan", "mountPath": PLAN_DIR, "readOnly": True},
        {"name": "scratch", "mountPath": SCRATCH},
    ]
    if runs_phases and target.reports_claim:
        mounts.append({"name": "reports",
                       "mountPath": f"{SCRATCH}/{Path(target.plan.reports).parts[0]}"})
    found: dict[str, Any] = {
        "name": "canarykit",
        "image": target.image,
        "args": list(args),
        "workingDir": SCRATCH,
        "env": [{"name": key, "value": value} for key, value in SCRATCH_ENV.items()],
        "resources": {part: dict(values) for part, values in RESOURCES.items()},
        "securityContext": container_security_context(),
        "volumeMounts": mounts,
    }
    if runs_phases and target.secret:
        found["envFrom"] = [{"secretRef": {"name": target.secret}}]
        mounts.append({"name": "credentials", "mountPath": SECRETS_DIR, "readOnly": True})
    return found


def step_args() -> list[str]:
    """What every runner runs: the next due phase of the plan the ConfigMap holds."""
    return ["rollout", "step", PLAN_PATH]


def _cron_job(target: Target) -> dict[str, Any]:
    timing, metadata = target.timing, target.meta()
    return {
        "apiVersion": "batch/v1", "kind": "CronJob", "metadata": metadata,
        "spec": {
            "schedule": target.schedule,
            "concurrencyPolicy": "Forbid",
            "startingDeadlineSeconds": timing["starting"],
            "successfulJobsHistoryLimit": HISTORY,
            "failedJobsHistoryLimit": HISTORY,
            "jobTemplate": {"spec": {
                "backoffLimit": 0,
                "activeDeadlineSeconds": timing["active"],
                "ttlSecondsAfterFinished": KEEP_FINISHED_SECONDS,
                "template": {
                    "metadata": {"labels": dict(metadata["labels"])},
                    "spec": {
                        "serviceAccountName": target.name,
                        "restartPolicy": "Never",
                        "securityContext": pod_security_context(),
                        "containers": [container(target, step_args())],
                        "volumes": volumes(target),
                    },
                },
            }},
        },
    }


def file_name(obj: dict[str, Any]) -> str:
    return f"{obj['kind'].lower()}-{obj['metadata']['name']}.yaml"


def kustomization(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
            "resources": [file_name(obj) for obj in objects]}


def write(objects: list[dict[str, Any]], output: Path) -> list[Path]:
    """One file per object and a kustomization.yaml listing them (a kustomize base)."""
    import yaml

    from canarykit.core.files import write_atomically

    output.mkdir(parents=True, exist_ok=True)
    written = []
    for obj in [*objects, kustomization(objects)]:
        path = output / (file_name(obj) if obj["kind"] != "Kustomization"
                         else "kustomization.yaml")
        write_atomically(path, yaml.safe_dump(obj, sort_keys=False), 0o644)
        written.append(path)
    return written


def add_arguments(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="deploy_command", required=True, metavar="COMMAND")
    sub = commands.add_parser("render", help="write the manifests that run a plan on the "
                              "cluster (CronJob or Argo Workflows, ServiceAccount, Role, "
                              "ConfigMap)")
    sub.add_argument("plan", type=Path, metavar="PLAN", help="the rollout plan (YAML)")
    sub.add_argument("--image", default=DEFAULT_IMAGE, help=f"default {DEFAULT_IMAGE}")
    sub.add_argument("--schedule", default=DEFAULT_SCHEDULE,
                     help=f"cron schedule of `rollout step` (default {DEFAULT_SCHEDULE!r})")
    sub.add_argument("--secret", default="", metavar="NAME",
                     help="Secret whose keys become environment variables and files under "
                     f"{SECRETS_DIR} (Prometheus token, object storage keys)")
    sub.add_argument("--reports-claim", default="", metavar="NAME",
                     help="PersistentVolumeClaim holding the release folders (required unless "
                          "the plan's reports are an object-storage URL)")
    sub.add_argument("--argo", action="store_true",
                     help="run the step from Argo Workflows (v3.6 or later) instead of a "
                     "CronJob: a WorkflowTemplate with a mutex per service and a suspend node "
                     "for the approve step, a CronWorkflow, and the Role its executor needs")
    sub.add_argument("--output", type=Path, default=None, metavar="DIR",
                     help="write one file per object and a kustomization.yaml here "
                     "(default: one YAML stream on stdout)")
    from canarykit.deploy import argo as argo_workflows  # its in-pod commands

    argo_workflows.add_arguments(commands)


def run(args: argparse.Namespace) -> int:
    import yaml

    if args.deploy_command != "render":
        from canarykit.deploy import argo as argo_workflows

        return argo_workflows.run(args)
    objects = render(args.plan, image=args.image, schedule=args.schedule, secret=args.secret,
                     reports_claim=args.reports_claim, argo=args.argo)
    if args.output is None:
        sys.stdout.write(yaml.safe_dump_all(objects, sort_keys=False))
        return ExitCode.OK
    for path in write(objects, args.output):
        print(path)
    return ExitCode.OK
