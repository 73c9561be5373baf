"""People in the loop: the approval gate, Flagger-style webhooks and the release's messages.

A scheduled rollout must say what it does and let people stop or approve it. The driver calls
these at fixed points: messages (`tell`) after each decision, the pre-rollout and pre-step
webhooks before traffic moves, the approve and confirm-promotion gates before promoting, the
post-rollout webhook once the release is over.

Approval is an annotation on the VirtualService whose value is the release it approves, so a
ChatOps bot or a UI can open the gate with `kubectl annotate` and a stale approval of an
earlier release never opens a later one:
    canarykit.io/approve: RELEASE   (or canarykit.io/reject: RELEASE)
    canarykit.io/approval-by: WHO   canarykit.io/approval-reason: TEXT   (optional)
`canarykit rollout approve PLAN [--reject]` sets them with the caller's identity. The runner
that sees the decision records it, with who and how, in the release's audit chain.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from canarykit.core import times
from canarykit.core.durations import parse_duration
from canarykit.core.errors import CanaryKitError

if TYPE_CHECKING:
    from canarykit.rollout.driver import Driver, DriverState
    from canarykit.rollout.plan import PhaseSpec
    from canarykit.routers import Router

APPROVE_ANNOTATION = "canarykit.io/approve"
REJECT_ANNOTATION = "canarykit.io/reject"
APPROVER_ANNOTATION = "canarykit.io/approval-by"
APPROVAL_REASON_ANNOTATION = "canarykit.io/approval-reason"
NOTIFICATION_LOG = "notifications.jsonl"
# How long a finishing command waits for messages still being delivered; a rollback never
# waits for them (they are sent from a background thread while it runs).
DELIVERY_WAIT_SECONDS = 20.0
# Runbooks that move traffic: the pre-step webhooks are called before each of them.
TRAFFIC_RUNBOOKS = ("internal-canary", "shift-traffic", "shadow", "blue-green", "traffic-policy")
ONE_LINE = 300


# ---------------------------------------------------------------- messages


def tell(driver: Driver, state: DriverState, kind: str, *, phase: str = "",
         verdict: str | None = None, reason: str = "", judges: list[str] | None = None) -> None:
    """Queue one message for the plan's channels; returns at once, never raises.

    The key names the logical event (release, phase, kind), so a phase executed again after a
    crash does not announce the same decision twice.
    """
    if not driver.plan.notifications:
        return
    from canarykit.notify.channels import Event

    key = "/".join(part for part in (state.release, phase, kind) if part)
    line = " ".join(reason.split())
    try:
        _notifier(driver, state).send(Event(
            kind=kind, service=driver.plan.service, namespace=driver.plan.namespace,
            release=state.release, phase=phase, verdict=verdict, reason=line[:ONE_LINE],
            report=str(Path(state.folder) / "report.html"), judges=judges or [], key=key))
    except CanaryKitError as exc:  # e.g. a secret's variable gone since the start
        driver.say(f"notifications not sent: {exc}")


def _notifier(driver: Driver, state: DriverState) -> Any:
    from canarykit.notify.channels import Notifier

    if driver.notifier is None or driver.notifier_folder != state.folder:
        if driver.notifier is not None:
            driver.notifier.close(DELIVERY_WAIT_SECONDS)
        driver.notifier = Notifier(driver.plan.notifications,
                                   Path(state.folder) / NOTIFICATION_LOG)
        driver.notifier_folder = state.folder
    return driver.notifier


def finish_messages(driver: Driver) -> None:
    """Wait (bounded) for the messages still being delivered, and say which failed."""
    if driver.notifier is None:
        return
    for delivery in driver.notifier.close(DELIVERY_WAIT_SECONDS):
        if not delivery.ok:
            driver.say(f"notification to {delivery.channel} ({delivery.kind}) about "
                       f"{delivery.event} not delivered: {delivery.error}")
    driver.notifier = None


def step_message(spec: PhaseSpec, record: dict[str, Any]) -> tuple[str, list[str]]:
    """The message kind for a judged phase's outcome and the judges that decided it."""
    verdict = record.get("verdict")
    deciding = [j for j in record.get("judgements", []) if j.get("verdict") == verdict]
    judges = [j["judge"] for j in deciding] or [j["judge"] for j in record.get("judgements", [])]
    return ("held" if verdict == "INCONCLUSIVE" else "step"), judges


# ---------------------------------------------------------------- webhooks


@dataclass
class HookCalls:
    """What the webhooks of one kind answered; ok when every one said 2xx."""

    kind: str
    entries: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(entry["ok"] for entry in self.entries)

    @property
    def reason(self) -> str:
        return "; ".join(f"{e['kind']} webhook {e['name']}: {e['reason']}"
                         for e in self.entries if not e["ok"])


def call_hooks(driver: Driver, state: DriverState, kind: str, *, phase: str = "",
               extra: dict[str, Any] | None = None) -> HookCalls:
    """Call the plan's webhooks of `kind` in order, each bounded by its timeout; each answer
    is kept in the release (state.hooks) for the report."""
    from canarykit.notify.hooks import call_hook

    calls = HookCalls(kind)
    for hook in driver.plan.hooks(kind):
        payload = {"service": driver.plan.service, "namespace": driver.plan.namespace,
                   "release": state.release, "stable": driver.plan.stable,
                   "canary": driver.plan.canary, "phase": phase, "status": state.status,
                   "reason": state.reason, **(extra or {})}
        result = call_hook(hook, payload)
        entry = {"at": times.timestamp(), "kind": kind, "name": hook.name, "phase": phase,
                 "ok": result.ok, "status": result.status, "reason": result.reason,
                 "seconds": round(result.seconds, 3)}
        state.hooks.append(entry)
        calls.entries.append(entry)
        if not result.ok:
            break  # the first refusal decides; later hooks are not asked
    return calls


# ---------------------------------------------------------------- the approval gate


def approval(vs: dict[str, Any], release: str) -> dict[str, str] | None:
    """The decision the VirtualService's annotations give on `release`, or None."""
    annotations = (vs.get("metadata") or {}).get("annotations") or {}
    for key, decision in ((REJECT_ANNOTATION, "rejected"), (APPROVE_ANNOTATION, "approved")):
        if annotations.get(key, "").strip() == release:
            return {"decision": decision,
                    "by": annotations.get(APPROVER_ANNOTATION, "").strip()[:200] or "unknown",
                    "reason": " ".join(annotations.get(APPROVAL_REASON_ANNOTATION, "").split())
                    [:ONE_LINE],
                    "how": f"annotation {key} on VirtualService "
                           f"{(vs.get('metadata') or {}).get('name', '')}"}
    return None


def approval_patch(release: str, *, reject: bool, by: str, reason: str) -> dict[str, Any]:
    """The merge patch `canarykit rollout approve` sends (clearing the opposite decision)."""
    chosen, other = ((REJECT_ANNOTATION, APPROVE_ANNOTATION) if reject
                     else (APPROVE_ANNOTATION, REJECT_ANNOTATION))
    return {"metadata": {"annotations": {chosen: release, other: None,
                                         APPROVER_ANNOTATION: by,
                                         APPROVAL_REASON_ANNOTATION: reason or None}}}


@dataclass
class GateCheck:
    """One look at a gate: open, closed (roll back) or still waiting (look again at `due`)."""

    status: str  # "open", "rollback" or "waiting"
    reason: str
    due: datetime | None = None
    entry: dict[str, Any] = field(default_factory=dict)


def routing_router(driver: Driver) -> Router:
    """The router of the plan's service (`routers.open_router`)."""
    from canarykit.routers import open_router

    plan = driver.plan
    return open_router(driver.kube, plan.service, plan.stable, plan.canary, plan.router)


def routing_object(driver: Driver) -> dict[str, Any]:
    """The object that routes the plan's service (a VirtualService or an HTTPRoute): the
    approvals of its releases are annotations on it."""
    return routing_router(driver).route()


def check_approval(driver: Driver, state: DriverState, spec: PhaseSpec,
                   at: datetime) -> GateCheck:
    settings = spec.parameters
    since = times.parse_timestamp(state.waiting["since"]) if state.waiting else at
    found = approval(routing_object(driver), state.release)
    if found is not None:
        _record_approval(driver, state, found)
        words = f"{found['decision']} by {found['by']} ({found['how']})"
        if found["reason"]:
            words += f": {found['reason']}"
        entry = {"approval": found}
        if found["decision"] == "approved":
            return GateCheck("open", words, entry=entry)
        return GateCheck("rollback", f"approval {words}", entry=entry)
    timeout = parse_duration(settings["timeout"], "timeout")
    if at - since >= timedelta(seconds=timeout) and settings["on_timeout"] == "rollback":
        return GateCheck("rollback", f"no approval within {settings['timeout']}")
    return GateCheck("waiting", f"waiting for approval of release {state.release} since "
                     f"{times.timestamp(since)}: `canarykit rollout approve PLAN` or "
                     f"`kubectl annotate virtualservice ... {APPROVE_ANNOTATION}="
                     f"{state.release}`",
                     due=at + timedelta(seconds=parse_duration(settings["check_every"])))


def check_confirmation(driver: Driver, state: DriverState, spec: PhaseSpec,
                       at: datetime) -> GateCheck:
    calls = call_hooks(driver, state, "confirm-promotion", phase=spec.name)
    if calls.ok:
        return GateCheck("open", "every confirm-promotion webhook answered 2xx")
    every = parse_duration(driver.plan.pause) or 60.0
    return GateCheck("waiting", f"promotion not confirmed yet: {calls.reason}",
                     due=at + timedelta(seconds=every))


def _record_approval(driver: Driver, state: DriverState, found: dict[str, str]) -> None:
    """The decision, who made it and how, in the release's audit chain (once)."""
    from canarykit.cluster import audit

    with audit.locked_log(Path(state.folder) / "audit.jsonl") as log:
        log.write(log.prepare({
            "actor": found["by"], "observed_by": driver.kube.actor,
            "server": driver.kube.server, "operation": f"approval-{found['decision']}",
            "target": f"release/{state.release}",
            "params": {"how": found["how"], "reason": found["reason"]}}))
