"""`canarykit deploy render PLAN --argo`: the same `rollout step`, run from Argo Workflows.

Instead of the CronJob, four objects run the plan (beside the ServiceAccount, Role, RoleBinding
and ConfigMap every runner shares, see manifests.py):

- a Role (and its RoleBinding) with what the Argo executor and the approval need on top:
  create/patch `workflowtaskresults` (how the executor of Argo 3.4 and later reports a step's
  output) and patch on VirtualServices (the approval annotation, as `rollout approve` sets it);
- a WorkflowTemplate `canarykit-SERVICE`, whose step runs in the CronJob's pod: the same
  container (image, arguments, environment, Secret, mounts, resources), security contexts,
  volumes and service account; its two small helper steps run the same container without
  the Secret and the release folders, which they do not need;
- a CronWorkflow running that template on the schedule, `concurrencyPolicy: Forbid`, with the
  CronJob's starting deadline.

The workflow holds the mutex `canarykit-SERVICE` (`spec.synchronization.mutexes`, Argo 3.6
and later; the singular `mutex` of older versions is gone from Argo 4), so two runs for one
service never overlap, whoever submitted them (the CronWorkflow, `argo submit --from
workflowtemplate/canarykit-SERVICE` by hand, a second CronWorkflow): the next one waits for
the lock. The cluster Lease that `rollout step` takes stays the guarantee; the mutex keeps Argo
from starting pods that would only find the lease taken.

Its steps:

    step      canarykit rollout step /etc/canarykit/plan.yaml    (as the CronJob; its deadline)
    look      canarykit deploy argo-waiting PLAN   -> the release waiting at an approve step,
                                                     or `none`
    gate      only when a release waits, for that release:
      approval  suspend node (input `decision`: approve or reject, default approve)
      decide    canarykit deploy argo-decide PLAN --release R --decision D ...

How the suspend node composes with canarykit's own approve gate: the gate stays canarykit's.
`rollout step` waits at the approve step until the VirtualService carries
`canarykit.io/approve=RELEASE` (or `reject`), whoever set it, and applies the step's `timeout`
and `on_timeout`. The suspend node is one more way to set that annotation, for the release
the look step saw waiting: resuming it (`argo resume WORKFLOW`, or RESUME in the UI, where the
decision is a drop-down) makes `decide` annotate that release, approved or rejected, with the
Argo user who resumed (the `workflows.argoproj.io/actor*` labels Argo sets when it knows
who; otherwise "unknown") and the workflow's name; to reject from the command line, `argo node
set WORKFLOW --output-parameter decision=reject --node-field-selector displayName=approval`
first. The runner that next looks at the gate records the decision in the release's audit
chain and opens (or closes) the gate, exactly as after `canarykit rollout approve`.

- The annotation names the release, so a node resumed late never opens a later release; and
  `decide` refuses (exit 1) when that release no longer waits at its approve step (it was
  decided another way, timed out, or was aborted).
- The suspend node lasts `duration` = the schedule's shortest interval minus twice the
  starting deadline, so the workflow ends about when the next run is due. (A suspend without
  a duration would hold the mutex, and with Forbid stop every later run, until someone came:
  no timeout, no approval any other way, no abort seen.) The next run looks
  at the gate again: the approve step's timeout and roll back still happen as with the
  CronJob, an approval given some other way (`rollout approve`, a ChatOps bot) is seen, and a
  new suspend node stands for the release while it still waits. A suspend node that expires
  is resumed by Argo itself with the default decision; `decide` tells the two apart by when
  the node ended (an expired node ends `duration` after it started, never earlier) and
  decides nothing then. A person's resume in the last second of the window may count as
  none: the next run asks again.
- A confirm-promotion gate (webhooks) has no suspend node: no person decides it.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path
from typing import Any

from canarykit.core.errors import BadInput, ExitCode
from canarykit.deploy import manifests

API_VERSION = "argoproj.io/v1alpha1"
NOTHING_WAITS = "none"  # what `argo-waiting` prints when no release waits for approval
DECISIONS = ("approve", "reject")
HELPER_SECONDS = 120  # deadline of the look and decide pods: one plan load and a cluster call
# What Argo Workflows needs on top of the step's Role: its executor reports each step's
# outputs as a WorkflowTaskResult (Argo 3.4 and later), and the approval annotation is the
# merge patch `rollout approve` sends.
ARGO_RULES = [
    {"apiGroups": ["argoproj.io"], "resources": ["workflowtaskresults"],
     "verbs": ["create", "patch"]},
    {"apiGroups": ["networking.istio.io"], "resources": ["virtualservices"], "verbs": ["patch"]},
]


def argo_rules(router: str) -> list[dict[str, Any]]:
    """Argo's executor's rules, and the approval's patch on the router's routing object (both
    routers' objects when the plan leaves the router to be detected)."""
    rules = copy.deepcopy(ARGO_RULES)
    if router != "istio":
        rules.append({"apiGroups": ["gateway.networking.k8s.io"],
                      "resources": ["httproutes", "grpcroutes"], "verbs": ["patch"]})
    if router == "gateway-api":
        del rules[1]
    return rules


# Who acted last on a workflow, as the Argo server labels it when it knows (SSO): the first
# one set names the person who resumed.
ACTION_LABEL = "workflows.argoproj.io/action"
ACTOR_LABELS = ("workflows.argoproj.io/actor-preferred-username",
                "workflows.argoproj.io/actor-email", "workflows.argoproj.io/actor")


def approval_window(timing: dict[str, int]) -> int:
    """Seconds a suspend node waits for a person: the run then ends about when the next one
    is due (that one looks at the gate again)."""
    return max(30, timing["interval"] - 2 * timing["starting"])


def objects(target: manifests.Target) -> list[dict[str, Any]]:
    """The Argo Role and its RoleBinding, the WorkflowTemplate and the CronWorkflow."""
    role = f"{target.name}-argo"
    return [
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
         "metadata": target.meta(role), "rules": argo_rules(target.plan.router)},
        manifests.role_binding(target, role),
        workflow_template(target),
        cron_workflow(target),
    ]


def workflow_template(target: manifests.Target) -> dict[str, Any]:
    timing, window = target.timing, approval_window(target.timing)
    plan = manifests.PLAN_PATH
    inputs = "{{inputs.parameters.%s}}"
    decide_args = ["deploy", "argo-decide", plan, "--release", inputs % "release",
                   "--decision", inputs % "decision", "--suspended-at", inputs % "suspended-at",
                   "--resumed-at", inputs % "resumed-at", "--window", str(window),
                   "--workflow", "{{workflow.name}}",
                   "--workflow-labels", "{{workflow.labels.json}}"]
    templates = [
        {"name": "rollout", "steps": [
            [{"name": "step", "template": "step"}],
            [{"name": "look", "template": "look"}],
            [{"name": "gate", "template": "gate",
              "when": f"'{{{{steps.look.outputs.result}}}}' != '{NOTHING_WAITS}'",
              "arguments": {"parameters": [
                  {"name": "release", "value": "{{steps.look.outputs.result}}"}]}}],
        ]},
        {"name": "step", "activeDeadlineSeconds": timing["active"],
         "container": manifests.container(target, manifests.step_args())},
        {"name": "look", "activeDeadlineSeconds": HELPER_SECONDS,
         "container": manifests.container(target, ["deploy", "argo-waiting", plan],
                                          runs_phases=False)},
        {"name": "gate", "inputs": {"parameters": [{"name": "release"}]}, "steps": [
            [{"name": "approval", "template": "approval"}],
            [{"name": "decide", "template": "decide", "arguments": {"parameters": [
                {"name": "release", "value": "{{inputs.parameters.release}}"},
                {"name": "decision", "value": "{{steps.approval.outputs.parameters.decision}}"},
                {"name": "suspended-at", "value": "{{steps.approval.startedAt}}"},
                {"name": "resumed-at", "value": "{{steps.approval.finishedAt}}"},
            ]}}],
        ]},
        {"name": "approval",
         "inputs": {"parameters": [{
             "name": "decision", "default": DECISIONS[0], "enum": list(DECISIONS),
             "description": "approve: the release goes on past its approve step; reject: it "
                            "is rolled back. The decision is recorded in the release's audit "
                            "chain with who resumed this node."}]},
         "suspend": {"duration": str(window)},
         "outputs": {"parameters": [{"name": "decision", "valueFrom": {
             "supplied": {}, "default": DECISIONS[0]}}]}},
        {"name": "decide", "activeDeadlineSeconds": HELPER_SECONDS,
         "inputs": {"parameters": [{"name": name} for name in
                                   ("release", "decision", "suspended-at", "resumed-at")]},
         "container": manifests.container(target, decide_args, runs_phases=False)},
    ]
    return {
        "apiVersion": API_VERSION, "kind": "WorkflowTemplate", "metadata": target.meta(),
        "spec": {
            "entrypoint": "rollout",
            "serviceAccountName": target.name,
            "synchronization": {"mutexes": [{"name": target.name}]},
            # a stuck run ends (and frees the mutex) once every part's deadline has passed
            "activeDeadlineSeconds": timing["active"] + window + 2 * HELPER_SECONDS,
            "ttlStrategy": {"secondsAfterCompletion": manifests.KEEP_FINISHED_SECONDS},
            "podMetadata": {"labels": dict(target.labels)},
            "securityContext": manifests.pod_security_context(),
            "volumes": manifests.volumes(target),
            "templates": templates,
        },
    }


def cron_workflow(target: manifests.Target) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION, "kind": "CronWorkflow", "metadata": target.meta(),
        "spec": {
            "schedules": [target.schedule],
            "concurrencyPolicy": "Forbid",
            "startingDeadlineSeconds": target.timing["starting"],
            "successfulJobsHistoryLimit": manifests.HISTORY,
            "failedJobsHistoryLimit": manifests.HISTORY,
            "workflowMetadata": {"labels": dict(target.labels)},
            "workflowSpec": {"workflowTemplateRef": {"name": target.name}},
        },
    }


# ---------------------------------------------------------------- in the workflow's pods


def waiting_release(driver: Any, state: Any) -> str | None:
    """The release of `state` when it waits at an approve step, else None."""
    from canarykit.core.errors import CanaryKitError
    from canarykit.rollout import driver as rollout

    if state is None or state.done or not state.waiting:
        return None
    try:
        spec = rollout.next_phase(driver, state)
    except CanaryKitError:
        return None
    return state.release if spec.gate == "approve" else None


def expired(suspended_at: str, resumed_at: str, window: int) -> bool:
    """Whether a suspend node ended by running out its `window` rather than by a person.

    Argo ends an expired node at or after its start plus the window (both times are
    whole seconds), a resumed one before; a resume in the window's last second counts as none.
    """
    from canarykit.core import times

    moments = []
    for flag, text in (("--suspended-at", suspended_at), ("--resumed-at", resumed_at)):
        try:
            moments.append(times.parse_timestamp(text))
        except ValueError:
            raise BadInput(flag, text, "must be an RFC 3339 time (the approval node's "
                           "startedAt / finishedAt)") from None
    return (moments[1] - moments[0]).total_seconds() >= window - 1


def argo_actor(labels_json: str) -> str:
    """Who resumed the workflow, from its labels as JSON; "" when Argo did not record it."""
    try:
        labels = json.loads(labels_json)
    except ValueError:
        return ""
    if not isinstance(labels, dict):
        return ""
    if str(labels.get(ACTION_LABEL, "resume")).lower() != "resume":
        return ""  # the labels name whoever acted last, and that was not a resume
    for key in ACTOR_LABELS:
        if isinstance(labels.get(key), str) and labels[key].strip():
            return labels[key].strip()[:100]
    return ""


def _open(plan: Path) -> Any:
    from canarykit.rollout import driver as rollout

    return rollout.open_driver(argparse.Namespace(plan=plan, runbooks=None,
                                                  lease_seconds=rollout.DEFAULT_LEASE_SECONDS))


def _current(driver: Any) -> Any:
    from canarykit.rollout import driver as rollout

    return rollout.lease_state(rollout.read_lease(driver.kube, driver.plan.service))


def cmd_waiting(args: argparse.Namespace) -> int:
    """Print the release waiting at its approve step (the workflow's `look` result), or none."""
    driver = _open(args.plan)
    print(waiting_release(driver, _current(driver)) or NOTHING_WAITS)
    return ExitCode.OK


def cmd_decide(args: argparse.Namespace) -> int:
    """Annotate the decision of a resumed approval node on the release it names."""
    from canarykit.cluster import client as cluster
    from canarykit.rollout import gates

    if args.window < 2:
        raise BadInput("--window", args.window, "must be at least 2 seconds")
    if expired(args.suspended_at, args.resumed_at, args.window):
        print(f"no decision: nobody resumed the approval node within {args.window}s; release "
              f"{args.release} still waits at its approve step, and the next run asks again")
        return ExitCode.OK
    driver = _open(args.plan)
    state = _current(driver)
    if waiting_release(driver, state) != args.release:
        now = ("no release" if state is None
               else f"release {state.release} is {state.status}"
               + (f", waiting at {state.waiting['gate']}" if state.waiting else ""))
        print(f"release {args.release} no longer waits for approval ({now}): nothing "
              f"{'rejected' if args.decision == 'reject' else 'approved'}; approve a release "
              "waiting now with `canarykit rollout approve`", file=sys.stderr)
        return ExitCode.FAILED
    reject = args.decision == "reject"
    who = argo_actor(args.workflow_labels) or "unknown"
    reason = f"resumed in Argo Workflows (workflow {args.workflow or 'unknown'})"
    route = gates.routing_object(driver)
    cluster.annotate(driver.kube, route["kind"], route["metadata"]["name"],
                     gates.approval_patch(args.release, reject=reject, by=who, reason=reason))
    print(f"release {args.release} {'rejected' if reject else 'approved'} by {who} ({reason}); "
          "the runner's next look at the gate records it and "
          + ("rolls the release back" if reject else "goes on"))
    return ExitCode.OK


def add_arguments(commands: Any) -> None:
    """The two commands the rendered WorkflowTemplate's pods run (subcommands of `deploy`)."""
    waiting = commands.add_parser(
        "argo-waiting", help="(run by the --argo WorkflowTemplate) print the release waiting at "
        f"its approve step, or {NOTHING_WAITS}")
    waiting.add_argument("plan", type=Path, metavar="PLAN", help="the rollout plan (YAML)")
    waiting.set_defaults(argo_handler=cmd_waiting)
    decide = commands.add_parser(
        "argo-decide", help="(run by the --argo WorkflowTemplate) approve or reject the release "
        "a resumed approval node names")
    decide.add_argument("plan", type=Path, metavar="PLAN", help="the rollout plan (YAML)")
    decide.add_argument("--release", required=True, help="the release the node was shown")
    decide.add_argument("--decision", required=True, choices=DECISIONS)
    decide.add_argument("--suspended-at", required=True, metavar="TIME",
                        help="when the approval node started (RFC 3339)")
    decide.add_argument("--resumed-at", required=True, metavar="TIME",
                        help="when it ended (RFC 3339)")
    decide.add_argument("--window", required=True, type=int, metavar="SECONDS",
                        help="the node's suspend duration")
    decide.add_argument("--workflow", default="", help="the workflow's name, for the record")
    decide.add_argument("--workflow-labels", default="{}", metavar="JSON",
                        help="the workflow's labels (who resumed it, when Argo knows)")
    decide.set_defaults(argo_handler=cmd_decide)


def run(args: argparse.Namespace) -> int:
    return args.argo_handler(args)
