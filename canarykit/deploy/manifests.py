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
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
from pathlib import Path
from typing import Any

from canarykit import __version__
from canarykit.core import names
from canarykit.core.durations import format_duration, parse_duration
from canarykit.core.errors import BadInput, ExitCode
from canarykit.deploy import cron

DEFAULT_SCHEDULE = "*/5 * * * *"
DEFAULT_IMAGE = f"ghcr.io/canarykit/canarykit:{__version__}"
PLAN_DIR = "/etc/canarykit"
SCRATCH = "/scratch"  # the only writable path: papermill, the kernels, the release folders
SECRETS_DIR = "/var/run/secrets/canarykit"
RUN_AS = 10001
RESOURCES = {"requests": {"cpu": "250m", "memory": "512Mi"},
             "limits": {"cpu": "1", "memory": "1Gi"}}
KEEP_FINISHED_SECONDS = 3600
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
        if seconds > longest:
            inherited = parameters[name] == getattr(plan.analysis, name)
            where = ("analysis" if spec.step is None or inherited
                     else f"steps[{spec.step}].analysis")
            longest, setting = seconds, f"{where}.{name}"
    return longest + PHASE_OVERHEAD_SECONDS, setting


def render(plan_path: Path, *, image: str = DEFAULT_IMAGE, schedule: str = DEFAULT_SCHEDULE,
           secret: str = "", reports_claim: str = "") -> list[dict[str, Any]]:
    """The objects, in apply order; BadInput (naming the flag or plan field) when the plan
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
    if not reports_claim:
        raise BadInput("--reports-claim", "", "is required: the release folders (executed "
                       "notebooks, audit chain, report) must outlive each run's pod; name a "
                       "PersistentVolumeClaim")
    if Path(plan.reports).is_absolute():
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
    name, namespace = _name(plan.service), plan.namespace
    labels = {**LABELS, "app.kubernetes.io/instance": plan.service}

    def meta(kind_name: str) -> dict[str, Any]:
        return {"name": kind_name, "namespace": namespace, "labels": dict(labels)}

    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta(name),
         "automountServiceAccountToken": True},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": meta(name),
         "rules": copy.deepcopy(ROLE_RULES)},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": meta(name),
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
         "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}]},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta(f"{name}-plan"),
         "data": {"plan.yaml": text}},
        _cron_job(meta(name), name, image, schedule, timing, secret, reports_claim,
                  plan.reports),
    ]


def _cron_job(metadata: dict[str, Any], name: str, image: str, schedule: str,
              timing: dict[str, int], secret: str, reports_claim: str,
              reports: str) -> dict[str, Any]:
    volumes: list[dict[str, Any]] = [
        {"name": "plan", "configMap": {"name": f"{name}-plan"}},
        {"name": "scratch", "emptyDir": {"sizeLimit": "1Gi"}},
        {"name": "reports", "persistentVolumeClaim": {"claimName": reports_claim}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "plan", "mountPath": PLAN_DIR, "readOnly": True},
        {"name": "scratch", "mountPath": SCRATCH},
        {"name": "reports", "mountPath": f"{SCRATCH}/{Path(reports).parts[0]}"},
    ]
    container: dict[str, Any] = {
        "name": "canarykit",
        "image": image,
        "args": ["rollout", "step", f"{PLAN_DIR}/plan.yaml"],
        "workingDir": SCRATCH,
        "env": [{"name": key, "value": value} for key, value in SCRATCH_ENV.items()],
        "resources": {part: dict(values) for part, values in RESOURCES.items()},
        "securityContext": {"runAsNonRoot": True, "runAsUser": RUN_AS, "runAsGroup": RUN_AS,
                            "readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False,
                            "capabilities": {"drop": ["ALL"]},
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "volumeMounts": mounts,
    }
    if secret:  # every key as an environment variable, and as a file for *_file settings
        container["envFrom"] = [{"secretRef": {"name": secret}}]
        volumes.append({"name": "credentials", "secret": {"secretName": secret,
                                                          "defaultMode": 0o440}})
        mounts.append({"name": "credentials", "mountPath": SECRETS_DIR, "readOnly": True})
    return {
        "apiVersion": "batch/v1", "kind": "CronJob", "metadata": metadata,
        "spec": {
            "schedule": schedule,
            "concurrencyPolicy": "Forbid",
            "startingDeadlineSeconds": timing["starting"],
            "successfulJobsHistoryLimit": 3,
            "failedJobsHistoryLimit": 3,
            "jobTemplate": {"spec": {
                "backoffLimit": 0,
                "activeDeadlineSeconds": timing["active"],
                "ttlSecondsAfterFinished": KEEP_FINISHED_SECONDS,
                "template": {
                    "metadata": {"labels": dict(metadata["labels"])},
                    "spec": {
                        "serviceAccountName": name,
                        "restartPolicy": "Never",
                        "securityContext": {"runAsNonRoot": True, "fsGroup": RUN_AS,
                                            "seccompProfile": {"type": "RuntimeDefault"}},
                        "containers": [container],
                        "volumes": volumes,
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
                              "cluster (CronJob, ServiceAccount, Role, ConfigMap)")
    sub.add_argument("plan", type=Path, metavar="PLAN", help="the rollout plan (YAML)")
    sub.add_argument("--image", default=DEFAULT_IMAGE, help=f"default {DEFAULT_IMAGE}")
    sub.add_argument("--schedule", default=DEFAULT_SCHEDULE,
                     help=f"cron schedule of `rollout step` (default {DEFAULT_SCHEDULE!r})")
    sub.add_argument("--secret", default="", metavar="NAME",
                     help="Secret whose keys become environment variables and files under "
                     f"{SECRETS_DIR} (Prometheus token, object storage keys)")
    sub.add_argument("--reports-claim", default="", metavar="NAME",
                     help="PersistentVolumeClaim holding the release folders (required)")
    sub.add_argument("--output", type=Path, default=None, metavar="DIR",
                     help="write one file per object and a kustomization.yaml here "
                     "(default: one YAML stream on stdout)")


def run(args: argparse.Namespace) -> int:
    import yaml

    objects = render(args.plan, image=args.image, schedule=args.schedule, secret=args.secret,
                     reports_claim=args.reports_claim)
    if args.output is None:
        sys.stdout.write(yaml.safe_dump_all(objects, sort_keys=False))
        return ExitCode.OK
    for path in write(objects, args.output):
        print(path)
    return ExitCode.OK
