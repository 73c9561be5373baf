"""The seeds' routing patterns from the command line (`canarykit route|weight|mirror|switch`)
on a real-shaped service in the local API server: each makes the seed's object, is refused
whole on bad input, and is undone by `canarykit rollback`."""

from __future__ import annotations

import copy

import pytest

from canarykit.cli.main import main
from canarykit.cluster import client as cluster
from canarykit.cluster.state import read_state
from canarykit.core.errors import ExitCode
from tests.apiserver_fixture import seed
from tests.policy_seeds import DR, FQDN, VS, canary_route


@pytest.fixture
def cli(apiserver, tmp_path):
    seed(apiserver, copy.deepcopy(VS), copy.deepcopy(DR))
    kube = cluster.connect(kubeconfig=str(apiserver.kubeconfig), namespace="prod")

    def run(command: str, *args: str) -> int:
        return main([command, FQDN, "--kubeconfig", str(apiserver.kubeconfig), "--audit-log",
                     str(tmp_path / "audit.jsonl"), *args])
    run.vs = lambda: cluster.get_object(kube, "VirtualService", "reviews")  # type: ignore
    return run


SUBSETS = ["--stable-subset", "stable", "--canary-subset", "canary"]


def _added(vs):
    return [(r["name"], r["match"], r["route"]) for r in vs["spec"]["http"]
            if r["name"].startswith("canary-internal")]


TO_CANARY = [{"destination": {"host": "reviews", "subset": "canary"}}]


@pytest.mark.parametrize("args, match", [
    (["--header", "end-user=jason"], {"headers": {"end-user": {"exact": "jason"}}}),
    (["--header", "x-team=qa-", "--header-match", "prefix"],
     {"headers": {"x-team": {"prefix": "qa-"}}}),
    (["--query", "canary=1"], {"queryParams": {"canary": {"exact": "1"}}}),
    (["--source-labels", "app=reviews-tester"], {"sourceLabels": {"app": "reviews-tester"}}),
    (["--header", "@request.auth.claims.groups=beta"],
     {"headers": {"@request.auth.claims.groups": {"exact": "beta"}}}),
])
def test_a_match_route_sends_those_requests_to_the_canary_ahead_of_the_split(cli, args,
                                                                             match):
    assert cli("route", *SUBSETS, *args) == ExitCode.OK
    vs = cli.vs()
    ((_, found, route),) = _added(vs)
    assert found == [match] and route == TO_CANARY
    names = [r["name"] for r in vs["spec"]["http"]]
    assert names.index("api") == len(names) - 1  # the split stays last
    assert read_state(vs).canary == "canary"


def test_a_cookie_route_and_then_a_weight_make_the_composite_seed(cli):
    assert cli("route", *SUBSETS, "--cookie", "beta=true") == ExitCode.OK
    assert cli("weight", "--canary", "10", *SUBSETS) == ExitCode.OK
    vs = cli.vs()
    ((name, match, _),) = _added(vs)
    assert name == "canary-internal-cookie" and "beta=true" in match[0]["headers"]["cookie"][
        "regex"]
    assert [d["weight"] for d in canary_route(vs)["route"]] == [90, 10]


def test_mirror_sets_mirror_percentage_and_off_removes_it(cli):
    assert cli("mirror", *SUBSETS, "--percent", "50") == ExitCode.OK
    route = canary_route(cli.vs())
    assert route["mirror"] == {"host": "reviews", "subset": "canary"}
    assert route["mirrorPercentage"] == {"value": 50}
    assert cli("mirror", "--off") == ExitCode.OK
    assert "mirror" not in canary_route(cli.vs())


def test_switch_is_blue_green_and_rollback_puts_everything_back(cli):
    before = cli.vs()["spec"]
    assert cli("switch", *SUBSETS, "--to", "canary") == ExitCode.OK
    assert canary_route(cli.vs())["route"] == TO_CANARY
    assert cli("rollback") == ExitCode.OK
    assert cli.vs()["spec"] == before


def test_routes_that_move_together_switch_in_one_write(cli):
    assert cli("switch", *SUBSETS, "--to", "canary", "--routes", "api,api-internal") == 0
    vs = cli.vs()
    assert [r["route"] for r in vs["spec"]["http"]] == [TO_CANARY, TO_CANARY]


@pytest.mark.parametrize("command, args, field", [
    ("route", ["--header", "end-user"], "--header"),
    ("route", ["--header", "End User=x"], "--header"),
    ("route", ["--header", "x-a=((", "--header-match", "regex"], "--header"),
    ("route", ["--query", "q"], "--query"),
    ("route", ["--source-labels", "app"], "--source-labels"),
    ("route", ["--source-labels", "app=no spaces"], "--source-labels"),
    ("route", [], "--header"),
    ("mirror", ["--percent", "130"], "--percent"),
    ("switch", ["--to", "blue"], "--to"),
    ("switch", ["--to", "canary", "--routes", "api,nope"], "--routes"),
])
def test_bad_input_is_refused_naming_it_and_nothing_changes(cli, capsys, command, args,
                                                             field):
    before = cli.vs()
    assert cli(command, *SUBSETS, *args) == ExitCode.BAD_INPUT
    error = capsys.readouterr().err
    assert error.startswith(f"canarykit: error: {field}: "), error
    assert cli.vs() == before


def test_routes_moving_together_are_kept_by_the_rollout_for_every_later_command(cli, capsys):
    assert cli("mirror", *SUBSETS, "--percent", "10", "--routes", "api,api-internal") == 0
    assert cli("weight", "--canary", "30", *SUBSETS) == ExitCode.OK  # no --routes given
    vs = cli.vs()
    assert [[d.get("weight") for d in r["route"]] for r in vs["spec"]["http"]] == [[70, 30]] * 2
    assert read_state(vs).routes == ["api", "api-internal"]
    assert cli("switch", *SUBSETS, "--to", "canary", "--routes", "api") == 2
    assert "moves routes api, api-internal together" in capsys.readouterr().err


def test_a_query_prefix_becomes_an_escaped_regex(cli):
    assert cli("route", *SUBSETS, "--query", "team=qa.", "--header-match", "prefix") == 0
    ((_, match, _),) = _added(cli.vs())
    assert match == [{"queryParams": {"team": {"regex": "qa\\..*"}}}]


def test_a_match_route_goes_in_front_of_the_first_of_the_routes_moving_together(cli):
    assert cli("route", *SUBSETS, "--header", "x-canary-user=true",
               "--routes", "api,api-internal") == 0
    names = [r["name"] for r in cli.vs()["spec"]["http"]]
    assert names == ["canary-internal-header", "api-internal", "api"]
