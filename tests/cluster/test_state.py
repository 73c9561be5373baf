"""Rollout state read from the VirtualService: anyone who can edit the object can write it, so
it is checked whole before a rollback relies on it."""

import json

import pytest

from canarykit.cluster.state import ROLLOUT_ANNOTATION, new_state, read_state, with_state
from canarykit.core.errors import BadInput

SNAPSHOT = {"virtualService": {"http": []}, "destinationRule": {"subsets": []},
            "destinationRuleName": "reviews"}


def _vs(annotation):
    return {"kind": "VirtualService", "metadata": {"name": "reviews",
                                                   "annotations": {ROLLOUT_ANNOTATION: annotation}}}


def _state(**changes):
    data = new_state("v1", "v2", SNAPSHOT, release="r1").to_dict()
    for key, value in changes.items():
        if value is None:
            data.pop(key)
        else:
            data[key] = value
    return json.dumps(data)


def test_state_written_by_canarykit_reads_back():
    state = new_state("v1", "v2", SNAPSHOT, release="r1")
    vs = with_state({"kind": "VirtualService", "metadata": {"name": "reviews"}}, state)
    assert read_state(vs) == state
    assert read_state({"metadata": {}}) is None


@pytest.mark.parametrize("annotation, field, problem", [
    (_state(stable=None), "canarykit.io/rollout].stable", "is missing"),
    (_state(snapshot=None), "canarykit.io/rollout].snapshot", "is missing"),
    (_state(snapshot={"destinationRule": {}}), "snapshot.virtualService",
     "must be the managed fields rollback restores"),
    (_state(snapshot={**SNAPSHOT, "destinationRule": "gone"}), "snapshot.destinationRule",
     "must be the managed fields"),
    (_state(snapshot={**SNAPSHOT, "destinationRuleName": ["x"]}), "destinationRuleName",
     "must be the DestinationRule's name"),
    (_state(step="two"), "canarykit.io/rollout].step", "must be a number"),
    (_state(step=True), "canarykit.io/rollout].step", "must be a number"),
    (_state(canary=7), "canarykit.io/rollout].canary", "must be a str"),
    ("[1, 2]", "canarykit.io/rollout]", "not a JSON object"),
    ("{not json", "canarykit.io/rollout]", "not JSON"),
    ("[" * 100_000 + "]" * 100_000, "canarykit.io/rollout]", "not JSON"),
])
def test_state_that_is_not_whole_is_refused_naming_the_field(annotation, field, problem):
    with pytest.raises(BadInput) as refused:
        read_state(_vs(annotation))
    message = str(refused.value)
    assert field in refused.value.field and problem in message
    assert "\n" not in message and len(message) < 400
