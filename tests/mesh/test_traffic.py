"""Specification of canarykit.mesh.traffic: pure, idempotent operations returning a Change."""

from __future__ import annotations

import json

import pytest
import re2
import yaml

from canarykit.core.errors import BadInput
from canarykit.mesh import istio, traffic

REVIEWS_VS = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
  namespace: default
  labels:
    app: reviews
  annotations:
    owner: team-reviews
  resourceVersion: "1234"
spec:
  hosts:
  - reviews
  exportTo:
  - .
  gateways:
  - mesh
  http:
  - name: jason
    match:
    - headers:
        end-user:
          exact: jason
    route:
    - destination:
        host: reviews
        subset: v2
  - name: split
    route:
    - destination:
        host: reviews
        subset: v1
        port:
          number: 9080
      weight: 90
    - destination:
        host: reviews
        subset: v2
        port:
          number: 9080
      weight: 10
    timeout: 10s
    retries:
      attempts: 2
      retryOn: 5xx
  tcp:
  - match:
    - port: 27017
    route:
    - destination:
        host: mongo.backup.svc.cluster.local
  tls:
  - match:
    - port: 443
      sniHosts:
      - login.bookinfo.com
    route:
    - destination:
        host: login.prod.svc.cluster.local
  someFutureField:
    keep: me
"""

REVIEWS_DR = """\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: reviews
  namespace: default
  annotations:
    owner: team-reviews
spec:
  host: reviews.default.svc.cluster.local
  exportTo:
  - '*'
  trafficPolicy:
    loadBalancer:
      simple: ROUND_ROBIN
    tls:
      mode: ISTIO_MUTUAL
  subsets:
  - name: v1
    labels:
      version: v1
  - name: v2
    labels:
      version: v2
    trafficPolicy:
      connectionPool:
        tcp:
          maxConnections: 100
  - name: v3
    labels:
      version: v3
"""


def load(text: str) -> dict:
    return yaml.safe_load(text)


@pytest.fixture
def vs() -> dict:
    return load(REVIEWS_VS)


@pytest.fixture
def dr() -> dict:
    return load(REVIEWS_DR)


def route(obj: dict, name: str) -> dict:
    return obj["spec"]["http"][istio.route_index(obj, name)]


def refused(call, *args, **kwargs) -> BadInput:
    with pytest.raises(BadInput) as err:
        call(*args, **kwargs)
    return err.value


def only_stable(vs: dict) -> dict:
    """The VirtualService before any canary: the split route sends everything to v1."""
    split = route(vs, "split")
    split["route"] = [split["route"][0]]
    del split["route"][0]["weight"]
    return vs


# Every operation as (name, how to get its input from the fixtures, the operation itself).
CASES = [
    ("set_canary_weight", lambda vs, dr: vs, lambda o, dr: traffic.set_canary_weight(o, 25)),
    ("set_canary_weight_checked_by_dr", lambda vs, dr: only_stable(vs),
     lambda o, dr: traffic.set_canary_weight(o, 5, dr=dr)),
    ("add_match_route_header", lambda vs, dr: vs,
     lambda o, dr: traffic.add_match_route(o, name="testers", header="x-canary", value="yes")),
    ("add_match_route_cookie", lambda vs, dr: vs,
     lambda o, dr: traffic.add_match_route(o, name="beta", cookie_regex=r".*(^|;\s*)beta=.*")),
    ("remove_match_route", lambda vs, dr: vs,
     lambda o, dr: traffic.remove_match_route(o, "jason")),
    ("set_mirror", lambda vs, dr: vs, lambda o, dr: traffic.set_mirror(o, percentage=20)),
    ("clear_mirror", lambda vs, dr: traffic.set_mirror(vs, percentage=20).after,
     lambda o, dr: traffic.clear_mirror(o)),
    ("switch_all_traffic", lambda vs, dr: vs,
     lambda o, dr: traffic.switch_all_traffic(o, "v2")),
    ("set_fault", lambda vs, dr: vs,
     lambda o, dr: traffic.set_fault(o, delay="2s", delay_percent=10, abort_status=503)),
    ("clear_fault", lambda vs, dr: traffic.set_fault(vs, abort_status=500).after,
     lambda o, dr: traffic.clear_fault(o)),
    ("set_timeout_and_retries", lambda vs, dr: vs,
     lambda o, dr: traffic.set_timeout_and_retries(o, timeout="3s", per_try_timeout="1s")),
    ("set_session_affinity", lambda vs, dr: dr,
     lambda o, dr: traffic.set_session_affinity(o, cookie="user", cookie_ttl="0s")),
    ("clear_session_affinity", lambda vs, dr: traffic.set_session_affinity(dr, header="x-u").after,
     lambda o, dr: traffic.clear_session_affinity(o)),
    ("set_outlier_detection", lambda vs, dr: dr,
     lambda o, dr: traffic.set_outlier_detection(o, consecutive_5xx_errors=5, interval="10s",
                                                 subset="v2")),
    ("set_connection_pool", lambda vs, dr: dr,
     lambda o, dr: traffic.set_connection_pool(o, http1_max_pending_requests=10)),
    ("ensure_subset", lambda vs, dr: dr, lambda o, dr: traffic.ensure_subset(o, "v4")),
    ("restore_managed_fields", lambda vs, dr: traffic.set_canary_weight(vs, 50).after,
     lambda o, dr: traffic.restore_managed_fields(o, istio.managed_fields(load(REVIEWS_VS)))),
]
CASE_IDS = [case[0] for case in CASES]


@pytest.mark.parametrize(("name", "make_input", "operation"), CASES, ids=CASE_IDS)
def test_every_operation_changes_once_and_is_idempotent(name, make_input, operation, vs, dr):
    first = operation(make_input(vs, dr), dr)
    assert first.changed
    assert name.startswith(first.operation)
    second = operation(first.after, dr)
    assert not second.changed
    assert second.diff() == ""
    assert second.after == first.after


@pytest.mark.parametrize(("name", "make_input", "operation"), CASES, ids=CASE_IDS)
def test_every_operation_leaves_its_input_alone(name, make_input, operation, vs, dr):
    obj = make_input(vs, dr)
    text, dr_text = istio.dump_object(obj), istio.dump_object(dr)
    change = operation(obj, dr)
    assert istio.dump_object(obj) == text
    assert istio.dump_object(dr) == dr_text
    assert change.before == obj
    change.after["spec"]["added-later"] = True
    change.before["spec"]["added-later"] = True
    assert "added-later" not in obj["spec"]


@pytest.mark.parametrize(("name", "make_input", "operation"), CASES, ids=CASE_IDS)
def test_every_operation_touches_only_managed_fields(name, make_input, operation, vs, dr):
    change = operation(make_input(vs, dr), dr)
    unmanaged_after = istio.with_managed_fields(change.after, {})
    assert unmanaged_after == istio.with_managed_fields(change.before, {})
    assert list(change.after["spec"]) == list(change.before["spec"])


@pytest.mark.parametrize(("name", "make_input", "operation"), CASES, ids=CASE_IDS)
def test_every_operation_is_undone_by_restoring_the_snapshot(name, make_input, operation, vs, dr):
    change = operation(make_input(vs, dr), dr)
    rollback = traffic.restore_managed_fields(change.after, istio.managed_fields(change.before))
    assert rollback.after == change.before
    assert rollback.changed


@pytest.mark.parametrize(("name", "make_input", "operation"), CASES, ids=CASE_IDS)
def test_every_change_reports_as_json_with_a_diff_headed_by_the_object(
        name, make_input, operation, vs, dr):
    change = operation(make_input(vs, dr), dr)
    report = json.loads(json.dumps(change.to_dict()))
    assert report["operation"] == change.operation
    assert report["target"] == istio.object_ref(change.after)
    assert report["changed"] is True
    assert report["before"] == istio.managed_fields(change.before)
    assert report["after"] == istio.managed_fields(change.after)
    assert report["diff"].startswith(f"--- {report['target']} (before)\n"
                                     f"+++ {report['target']} (after)\n")
    assert any(line[:1] in "+-" for line in report["diff"].splitlines()[2:])


# --- set_canary_weight -----------------------------------------------------------------------

def test_canary_weight_splits_the_catch_all_route_and_keeps_ports(vs):
    change = traffic.set_canary_weight(vs, 25)
    split = route(change.after, "split")
    assert [(d["destination"]["subset"], d["weight"]) for d in split["route"]] == [
        ("v1", 75), ("v2", 25)]
    assert all(d["destination"]["port"] == {"number": 9080} for d in split["route"])
    assert route(change.after, "jason") == route(vs, "jason")
    assert "-      weight: 90\n+      weight: 75\n" in change.diff()
    assert "+      weight: 25\n" in change.diff()
    assert change.params == {"canary_weight": 25, "stable": "v1", "canary": "v2", "route": None}


@pytest.mark.parametrize(("weight", "expected"), [(0, [100, 0]), (100, [0, 100])])
def test_canary_weight_keeps_both_destinations_at_the_ends(vs, weight, expected):
    split = route(traffic.set_canary_weight(vs, weight).after, "split")
    assert [d["weight"] for d in split["route"]] == expected
    assert [d["destination"]["subset"] for d in split["route"]] == ["v1", "v2"]


def test_canary_weight_adds_the_canary_destination_copying_host_and_port(vs):
    change = traffic.set_canary_weight(only_stable(vs), 10)
    assert route(change.after, "split")["route"] == [
        {"destination": {"host": "reviews", "subset": "v1", "port": {"number": 9080}},
         "weight": 90},
        {"destination": {"host": "reviews", "subset": "v2", "port": {"number": 9080}},
         "weight": 10}]
    assert "+        subset: v2\n" in change.diff()


def test_canary_weight_adds_the_stable_destination_when_only_the_canary_is_left(vs, dr):
    switched = traffic.switch_all_traffic(vs, "v2").after
    split = route(traffic.set_canary_weight(switched, 30, dr=dr).after, "split")
    assert [(d["destination"]["subset"], d["weight"]) for d in split["route"]] == [
        ("v1", 70), ("v2", 30)]


def test_canary_weight_on_a_named_route(vs):
    after = traffic.set_canary_weight(vs, 40, route="jason").after
    assert [(d["destination"]["subset"], d["weight"]) for d in route(after, "jason")["route"]] == [
        ("v1", 60), ("v2", 40)]
    assert route(after, "split") == route(vs, "split")


@pytest.mark.parametrize("weight", [130, -5, 101, 12.5, True, "10", None, float("nan")])
def test_canary_weight_outside_0_to_100_is_refused_naming_the_field(vs, weight):
    err = refused(traffic.set_canary_weight, vs, weight)
    assert err.field == "canary_weight"
    assert err.value is weight
    assert "canary_weight" in str(err)


def test_whole_float_weight_is_accepted_as_an_integer(vs):
    split = route(traffic.set_canary_weight(vs, 20.0).after, "split")
    assert [d["weight"] for d in split["route"]] == [80, 20]
    assert isinstance(split["route"][1]["weight"], int)


def test_unknown_stable_subset_is_refused_naming_it(vs):
    err = refused(traffic.set_canary_weight, vs, 10, stable="v9")
    assert (err.field, err.value) == ("stable", "v9")
    assert "v1, v2" in err.problem


def test_canary_subset_unknown_to_the_destination_rule_is_refused(vs, dr):
    err = refused(traffic.set_canary_weight, vs, 10, canary="v7", dr=dr)
    assert (err.field, err.value) == ("canary", "v7")
    assert "DestinationRule default/reviews" in err.problem


def test_subset_name_that_is_not_a_dns_label_is_refused(vs):
    err = refused(traffic.set_canary_weight, vs, 10, canary="V2_new")
    assert (err.field, err.value) == ("canary", "V2_new")


def test_same_stable_and_canary_is_refused(vs):
    err = refused(traffic.set_canary_weight, vs, 10, canary="v1")
    assert (err.field, err.value) == ("canary", "v1")


def test_route_with_a_third_subset_is_not_split(vs, dr):
    err = refused(traffic.set_canary_weight, vs, 10, canary="v3", route="split", dr=dr)
    assert (err.field, err.value) == ("route", "split")
    assert "v2" in err.problem


def test_destination_rule_of_another_host_is_refused(vs, dr):
    dr["spec"]["host"] = "ratings"
    err = refused(traffic.set_canary_weight, vs, 10, dr=dr)
    assert (err.field, err.value) == ("dr", "DestinationRule default/reviews")


def test_destination_rule_host_in_short_form_is_the_same_host(vs, dr):
    dr["spec"]["host"] = "reviews"
    assert traffic.set_canary_weight(vs, 10, dr=dr).changed is False


def test_unknown_route_name_is_refused_listing_routes(vs):
    err = refused(traffic.set_canary_weight, vs, 10, route="main")
    assert (err.field, err.value) == ("route", "main")
    assert "jason, split" in err.problem


def test_operations_on_the_wrong_kind_are_refused(vs, dr):
    assert refused(traffic.set_canary_weight, dr, 10).field == "kind"
    assert refused(traffic.set_session_affinity, vs, header="x-user").field == "kind"
    assert refused(traffic.ensure_subset, vs, "v4").value == "VirtualService"


# --- match routes ---------------------------------------------------------------------------

def test_header_match_route_goes_in_front_of_the_split(vs):
    change = traffic.add_match_route(vs, name="testers", header="x-canary", value="yes")
    names = [r.get("name") for r in change.after["spec"]["http"]]
    assert names == ["jason", "testers", "split"]
    assert route(change.after, "testers") == {
        "name": "testers",
        "match": [{"headers": {"x-canary": {"exact": "yes"}}}],
        "route": [{"destination": {"host": "reviews", "subset": "v2", "port": {"number": 9080}}}]}
    assert "+        x-canary:\n+          exact: 'yes'\n" in change.diff()


@pytest.mark.parametrize(("kind", "value"), [("prefix", "internal-"), ("regex", "^(alice|bob)$")])
def test_header_match_route_prefix_and_regex(vs, kind, value):
    after = traffic.add_match_route(vs, name="staff", header="x-user", match=kind,
                                    value=value).after
    assert route(after, "staff")["match"] == [{"headers": {"x-user": {kind: value}}}]


def test_cookie_match_route_matches_the_cookie_header_by_regex(vs):
    pattern = traffic.cookie_regex("beta", "on")
    after = traffic.add_match_route(vs, name="beta", cookie_regex=pattern).after
    assert route(after, "beta")["match"] == [{"headers": {"cookie": {"regex": pattern}}}]
    compiled = re2.compile(pattern)
    assert compiled.fullmatch("beta=on")
    assert compiled.fullmatch("session=abc; beta=on; theme=dark")
    assert not compiled.fullmatch("notbeta=on")
    assert not compiled.fullmatch("beta=onion")
    assert re2.compile(traffic.cookie_regex("beta")).fullmatch("a=1;beta=anything")


def test_re_adding_a_match_route_replaces_it_in_place(vs):
    first = traffic.add_match_route(vs, name="testers", header="x-canary", value="yes").after
    second = traffic.add_match_route(first, name="testers", header="x-canary", value="no").after
    assert [r.get("name") for r in second["spec"]["http"]] == ["jason", "testers", "split"]
    assert route(second, "testers")["match"] == [{"headers": {"x-canary": {"exact": "no"}}}]


def test_match_route_for_a_new_subset_needs_the_destination_rule(vs, dr):
    err = refused(traffic.add_match_route, vs, name="t", canary="v3", header="x-v", value="3",
                  route="split")
    assert (err.field, err.value) == ("canary", "v3")
    after = traffic.add_match_route(vs, name="t", canary="v3", header="x-v", value="3",
                                    route="split", dr=dr).after
    assert route(after, "t")["route"][0]["destination"]["subset"] == "v3"


@pytest.mark.parametrize(("kwargs", "field", "value"), [
    ({"header": "X-Canary", "value": "1"}, "header", "X-Canary"),
    ({"header": "x canary", "value": "1"}, "header", "x canary"),
    ({"header": "", "value": "1"}, "header", ""),
    ({"header": "x-canary", "match": "glob", "value": "1"}, "match", "glob"),
    ({"header": "x-canary", "match": "regex", "value": "(unclosed"}, "value", "(unclosed"),
    ({"header": "x-canary", "match": "regex", "value": "a(?=b)"}, "value", "a(?=b)"),
    ({"header": "x-canary"}, "value", None),
    ({"cookie_regex": "beta=[", "value": None}, "cookie_regex", "beta=["),
    ({"cookie_regex": ".*beta.*", "value": "1"}, "value", "1"),
    ({}, "header", None),
    ({"header": "x-canary", "value": "1", "cookie_regex": ".*"}, "header", "x-canary"),
])
def test_bad_match_route_parameters_are_refused_naming_them(vs, kwargs, field, value):
    err = refused(traffic.add_match_route, vs, name="testers", **kwargs)
    assert (err.field, err.value) == (field, value)


def test_match_route_cannot_take_the_name_of_the_split_route(vs):
    err = refused(traffic.add_match_route, vs, name="split", header="x-c", value="1")
    assert (err.field, err.value) == ("name", "split")


def test_bad_route_name_is_refused(vs):
    err = refused(traffic.add_match_route, vs, name="has space", header="x-c", value="1")
    assert (err.field, err.value) == ("name", "has space")


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"name": "canary-internal\n", "header": "x-c", "value": "1"}, "name"),
    ({"name": "testers", "header": "x-canary\n", "value": "1"}, "header"),
])
def test_a_name_with_a_trailing_newline_is_refused(vs, kwargs, field):
    # `re.match` with `^...$` let these through: `$` matches before a final newline.
    assert refused(traffic.add_match_route, vs, **kwargs).field == field


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"cookie": "session\n"}, "cookie"),
    ({"cookie": "session", "cookie_path": "/app\n"}, "cookie_path"),
    ({"query_parameter": "user\n"}, "query_parameter"),
    ({"header": "x-user\n"}, "header"),
])
def test_session_affinity_names_with_a_trailing_newline_are_refused(dr, kwargs, field):
    assert refused(traffic.set_session_affinity, dr, **kwargs).field == field


def test_subset_labels_and_cookie_parts_with_a_trailing_newline_are_refused(dr):
    assert refused(traffic.ensure_subset, dr, "v4", "v4\n").field == "version_label"
    assert refused(traffic.cookie_regex, "beta\n").field == "cookie"
    assert refused(traffic.cookie_regex, "beta", "on\n").field == "value"


def test_bad_cookie_name_for_the_regex_helper_is_refused():
    assert refused(traffic.cookie_regex, "be ta").field == "cookie"
    assert refused(traffic.cookie_regex, "beta", "a;b").field == "value"


def test_removing_a_match_route_removes_only_it(vs):
    change = traffic.remove_match_route(vs, "jason")
    assert [r.get("name") for r in change.after["spec"]["http"]] == ["split"]
    assert "-  - name: jason\n" in change.diff()


def test_removing_an_absent_match_route_changes_nothing(vs):
    assert not traffic.remove_match_route(vs, "nobody").changed


def test_removing_the_catch_all_route_is_refused(vs):
    err = refused(traffic.remove_match_route, vs, "split")
    assert (err.field, err.value) == ("name", "split")


# --- mirroring --------------------------------------------------------------------------------

def test_mirror_shadows_a_percentage_to_the_canary(vs):
    change = traffic.set_mirror(vs, percentage=12.5)
    split = route(change.after, "split")
    assert split["mirror"] == {"host": "reviews", "subset": "v2", "port": {"number": 9080}}
    assert split["mirrorPercentage"] == {"value": 12.5}
    assert "+    mirrorPercentage:\n+      value: 12.5\n" in change.diff()


def test_mirror_replaces_the_deprecated_percent_field(vs):
    route(vs, "split")["mirrorPercent"] = 50
    split = route(traffic.set_mirror(vs, percentage=5).after, "split")
    assert "mirrorPercent" not in split
    assert split["mirrorPercentage"] == {"value": 5}


@pytest.mark.parametrize("percentage", [-1, 100.5, "10", None, True])
def test_bad_mirror_percentage_is_refused(vs, percentage):
    err = refused(traffic.set_mirror, vs, percentage=percentage)
    assert (err.field, err.value) == ("percentage", percentage)


def test_mirror_to_an_unknown_subset_is_refused(vs, dr):
    assert refused(traffic.set_mirror, vs, subset="v3", percentage=5).field == "subset"
    after = traffic.set_mirror(vs, subset="v3", percentage=5, route="split", dr=dr).after
    assert route(after, "split")["mirror"]["subset"] == "v3"


def test_mirror_to_the_stable_subset_is_refused(vs):
    err = refused(traffic.set_mirror, vs, subset="v1", percentage=5)
    assert (err.field, err.value) == ("subset", "v1")


def test_mirror_is_refused_when_the_route_uses_mirrors(vs):
    route(vs, "split")["mirrors"] = [{"destination": {"host": "reviews", "subset": "v3"}}]
    err = refused(traffic.set_mirror, vs, percentage=5)
    assert (err.field, err.value) == ("route", "split")
    assert "mirrors" in err.problem


def test_clear_mirror_removes_mirroring_but_leaves_mirrors_alone(vs):
    mirrored = traffic.set_mirror(vs, percentage=5).after
    cleared = route(traffic.clear_mirror(mirrored).after, "split")
    assert "mirror" not in cleared and "mirrorPercentage" not in cleared
    route(vs, "split")["mirrors"] = [{"destination": {"host": "reviews", "subset": "v3"}}]
    assert not traffic.clear_mirror(vs).changed


# --- blue-green switch ------------------------------------------------------------------------

def test_switch_all_traffic_leaves_one_destination_without_weight(vs):
    change = traffic.switch_all_traffic(vs, "v2")
    assert route(change.after, "split")["route"] == [
        {"destination": {"host": "reviews", "subset": "v2", "port": {"number": 9080}}}]
    assert route(change.after, "jason") == route(vs, "jason")
    assert istio.subset_weights(route(change.after, "split")) == {"v2": 100}


def test_switch_all_traffic_back_to_stable_checks_it_against_the_destination_rule(vs, dr):
    switched = traffic.switch_all_traffic(vs, "v2").after
    err = refused(traffic.switch_all_traffic, switched, "v1")
    assert (err.field, err.value) == ("subset", "v1")
    assert "pass the DestinationRule" in err.problem
    after = traffic.switch_all_traffic(switched, "v1", dr=dr).after
    assert route(after, "split")["route"] == [
        {"destination": {"host": "reviews", "subset": "v1", "port": {"number": 9080}}}]


def test_switch_to_a_subset_not_in_the_route_copies_host_and_port(vs, dr):
    after = traffic.switch_all_traffic(vs, "v3", dr=dr).after
    assert route(after, "split")["route"] == [
        {"destination": {"host": "reviews", "subset": "v3", "port": {"number": 9080}}}]


def test_switch_to_an_unknown_subset_is_refused(vs, dr):
    assert refused(traffic.switch_all_traffic, vs, "v3").value == "v3"
    assert refused(traffic.switch_all_traffic, vs, "v9", dr=dr).field == "subset"


def test_next_release_starts_from_the_promoted_subset(vs, dr):
    promoted = traffic.switch_all_traffic(vs, "v2").after
    split = route(traffic.set_canary_weight(promoted, 10, stable="v2", canary="v3",
                                            dr=dr).after, "split")
    assert [(d["destination"]["subset"], d["weight"]) for d in split["route"]] == [
        ("v2", 90), ("v3", 10)]


# --- fault injection --------------------------------------------------------------------------

def test_fault_sets_delay_and_abort_on_the_canary_route(vs):
    change = traffic.set_fault(vs, delay="5s", delay_percent=10, abort_status=503,
                               abort_percent=2.5)
    assert route(change.after, "split")["fault"] == {
        "delay": {"fixedDelay": "5s", "percentage": {"value": 10}},
        "abort": {"httpStatus": 503, "percentage": {"value": 2.5}}}
    assert "fault" not in route(change.after, "jason")
    assert "+        fixedDelay: 5s\n" in change.diff()


def test_fault_on_a_named_route_with_default_percentage(vs):
    after = traffic.set_fault(vs, route="jason", abort_status=500).after
    assert route(after, "jason")["fault"] == {
        "abort": {"httpStatus": 500, "percentage": {"value": 100}}}
    assert "fault" not in route(after, "split")


def test_fault_becomes_exactly_what_is_given(vs):
    both = traffic.set_fault(vs, delay="1s", abort_status=503).after
    delay_only = traffic.set_fault(both, delay="1s").after
    assert route(delay_only, "split")["fault"] == {
        "delay": {"fixedDelay": "1s", "percentage": {"value": 100}}}


def test_clear_fault_removes_it(vs):
    faulty = traffic.set_fault(vs, delay="1s").after
    assert traffic.clear_fault(faulty).after == vs


@pytest.mark.parametrize(("kwargs", "field", "value"), [
    ({"delay": "5 seconds"}, "delay", "5 seconds"),
    ({"delay": "0s"}, "delay", "0s"),
    ({"delay": 5}, "delay", 5),
    ({"delay": "1s", "delay_percent": 150}, "delay_percent", 150),
    ({"delay_percent": 10, "abort_status": 503}, "delay_percent", 10),
    ({"abort_status": 600}, "abort_status", 600),
    ({"abort_status": 199}, "abort_status", 199),
    ({"abort_status": "503"}, "abort_status", "503"),
    ({"abort_status": 503, "abort_percent": -1}, "abort_percent", -1),
    ({"delay": "1s", "abort_percent": 5}, "abort_percent", 5),
    ({}, "delay", None),
])
def test_bad_fault_parameters_are_refused_naming_them(vs, kwargs, field, value):
    err = refused(traffic.set_fault, vs, **kwargs)
    assert (err.field, err.value) == (field, value)


# --- timeout and retries ----------------------------------------------------------------------

def test_timeout_and_retries_merge_into_the_route(vs):
    change = traffic.set_timeout_and_retries(vs, timeout="3s", per_try_timeout="1s",
                                             retry_on=["gateway-error", "reset", "503"])
    split = route(change.after, "split")
    assert split["timeout"] == "3s"
    assert split["retries"] == {"attempts": 2, "retryOn": "gateway-error,reset,503",
                                "perTryTimeout": "1s"}
    assert "-    timeout: 10s\n+    timeout: 3s\n" in change.diff()


def test_retries_are_created_on_a_route_without_them(vs):
    after = traffic.set_timeout_and_retries(vs, route="jason", attempts=3,
                                            retry_on="5xx,connect-failure").after
    assert route(after, "jason")["retries"] == {"attempts": 3, "retryOn": "5xx,connect-failure"}
    assert "timeout" not in route(after, "jason")


@pytest.mark.parametrize(("kwargs", "field", "value"), [
    ({"timeout": "soon"}, "timeout", "soon"),
    ({"timeout": "0ms"}, "timeout", "0ms"),
    ({"per_try_timeout": "-1s"}, "per_try_timeout", "-1s"),
    ({"attempts": -1}, "attempts", -1),
    ({"attempts": 1.5}, "attempts", 1.5),
    ({"retry_on": "5xx,sometimes"}, "retry_on", "sometimes"),
    ({"retry_on": "5xx,,reset"}, "retry_on", ""),
    ({"retry_on": "999"}, "retry_on", "999"),
    ({"retry_on": []}, "retry_on", []),
    ({}, "timeout", None),
])
def test_bad_timeout_and_retry_parameters_are_refused_naming_them(vs, kwargs, field, value):
    err = refused(traffic.set_timeout_and_retries, vs, **kwargs)
    assert (err.field, err.value) == (field, value)


def test_every_documented_retry_condition_is_accepted():
    conditions = sorted(istio.RETRY_ON_POLICIES)
    assert traffic.retry_conditions(conditions) == ",".join(conditions)
    assert "retriable-status-codes" in conditions and "reset-before-request" in conditions


# --- session affinity -------------------------------------------------------------------------

def test_session_affinity_by_header_replaces_simple_balancing_and_keeps_tls(dr):
    change = traffic.set_session_affinity(dr, header="x-user")
    policy = change.after["spec"]["trafficPolicy"]
    assert policy == {"loadBalancer": {"consistentHash": {"httpHeaderName": "x-user"}},
                      "tls": {"mode": "ISTIO_MUTUAL"}}
    assert "-      simple: ROUND_ROBIN\n" in change.diff()


def test_session_affinity_by_cookie_in_one_subset(dr):
    after = traffic.set_session_affinity(dr, cookie="session", cookie_ttl="1h",
                                         cookie_path="/", subset="v2").after
    v2 = after["spec"]["subsets"][1]
    assert v2["trafficPolicy"] == {
        "connectionPool": {"tcp": {"maxConnections": 100}},
        "loadBalancer": {"consistentHash": {
            "httpCookie": {"name": "session", "ttl": "1h", "path": "/"}}}}
    assert after["spec"]["trafficPolicy"] == dr["spec"]["trafficPolicy"]


def test_session_affinity_for_a_subset_without_policy_creates_one(dr):
    after = traffic.set_session_affinity(dr, source_ip=True, subset="v3").after
    assert after["spec"]["subsets"][2]["trafficPolicy"] == {
        "loadBalancer": {"consistentHash": {"useSourceIp": True}}}


def test_changing_the_hash_key_keeps_hash_tuning(dr):
    dr["spec"]["trafficPolicy"]["loadBalancer"] = {
        "consistentHash": {"httpHeaderName": "x-user", "minimumRingSize": 1024}}
    after = traffic.set_session_affinity(dr, query_parameter="user").after
    assert after["spec"]["trafficPolicy"]["loadBalancer"] == {
        "consistentHash": {"minimumRingSize": 1024, "httpQueryParameterName": "user"}}


@pytest.mark.parametrize(("kwargs", "field", "value"), [
    ({}, "session_affinity", []),
    ({"header": "x-user", "cookie": "c"}, "session_affinity", ["header", "cookie"]),
    ({"header": "X-User"}, "header", "X-User"),
    ({"cookie": "bad cookie"}, "cookie", "bad cookie"),
    ({"cookie": "c", "cookie_ttl": "a day"}, "cookie_ttl", "a day"),
    ({"cookie": "c", "cookie_path": "relative"}, "cookie_path", "relative"),
    ({"header": "x-user", "cookie_ttl": "1h"}, "cookie_ttl", "1h"),
    ({"source_ip": "yes"}, "source_ip", "yes"),
    ({"query_parameter": "a b"}, "query_parameter", "a b"),
    ({"header": "x-user", "subset": "v9"}, "subset", "v9"),
])
def test_bad_session_affinity_parameters_are_refused_naming_them(dr, kwargs, field, value):
    err = refused(traffic.set_session_affinity, dr, **kwargs)
    assert (err.field, err.value) == (field, value)


def test_unknown_subset_error_lists_the_subsets(dr):
    err = refused(traffic.set_session_affinity, dr, header="x-user", subset="v9")
    assert "v1, v2, v3" in err.problem


def test_clear_session_affinity_removes_hashing_and_empty_parents(dr):
    hashed = traffic.set_session_affinity(dr, source_ip=True, subset="v3").after
    cleared = traffic.clear_session_affinity(hashed, subset="v3").after
    assert cleared == dr
    top = traffic.set_session_affinity(dr, header="x-user").after
    assert traffic.clear_session_affinity(top).after["spec"]["trafficPolicy"] == {
        "tls": {"mode": "ISTIO_MUTUAL"}}


def test_clear_session_affinity_without_hashing_changes_nothing(dr):
    assert not traffic.clear_session_affinity(dr).changed
    assert not traffic.clear_session_affinity(dr, subset="v3").changed


# --- outlier detection and connection pool ----------------------------------------------------

def test_outlier_detection_uses_the_crd_field_names(dr):
    change = traffic.set_outlier_detection(dr, consecutive_5xx_errors=5,
                                           consecutive_gateway_errors=3, interval="10s",
                                           base_ejection_time="30s", max_ejection_percent=50,
                                           min_health_percent=20)
    assert change.after["spec"]["trafficPolicy"]["outlierDetection"] == {
        "consecutive5xxErrors": 5, "consecutiveGatewayErrors": 3, "interval": "10s",
        "baseEjectionTime": "30s", "maxEjectionPercent": 50, "minHealthPercent": 20}
    assert "+      consecutive5xxErrors: 5\n" in change.diff()


def test_outlier_detection_merges_with_existing_settings(dr):
    first = traffic.set_outlier_detection(dr, interval="10s", subset="v2").after
    second = traffic.set_outlier_detection(first, consecutive_5xx_errors=0, subset="v2").after
    assert second["spec"]["subsets"][1]["trafficPolicy"]["outlierDetection"] == {
        "interval": "10s", "consecutive5xxErrors": 0}


@pytest.mark.parametrize(("kwargs", "field", "value"), [
    ({"consecutive_5xx_errors": -1}, "consecutive_5xx_errors", -1),
    ({"consecutive_gateway_errors": 2**32}, "consecutive_gateway_errors", 2**32),
    ({"interval": "1x"}, "interval", "1x"),
    ({"base_ejection_time": "0s"}, "base_ejection_time", "0s"),
    ({"max_ejection_percent": 101}, "max_ejection_percent", 101),
    ({"min_health_percent": -3}, "min_health_percent", -3),
    ({}, "consecutive_5xx_errors", None),
    ({"interval": "1s", "subset": "v9"}, "subset", "v9"),
])
def test_bad_outlier_detection_parameters_are_refused_naming_them(dr, kwargs, field, value):
    err = refused(traffic.set_outlier_detection, dr, **kwargs)
    assert (err.field, err.value) == (field, value)


def test_connection_pool_sets_tcp_and_http_limits(dr):
    change = traffic.set_connection_pool(dr, max_connections=10, connect_timeout="250ms",
                                         http1_max_pending_requests=5, http2_max_requests=50,
                                         max_requests_per_connection=1, max_retries=3,
                                         idle_timeout="30s")
    assert change.after["spec"]["trafficPolicy"]["connectionPool"] == {
        "tcp": {"maxConnections": 10, "connectTimeout": "250ms"},
        "http": {"http1MaxPendingRequests": 5, "http2MaxRequests": 50,
                 "maxRequestsPerConnection": 1, "maxRetries": 3, "idleTimeout": "30s"}}


def test_connection_pool_per_subset_keeps_existing_limits(dr):
    after = traffic.set_connection_pool(dr, http1_max_pending_requests=1, subset="v2").after
    assert after["spec"]["subsets"][1]["trafficPolicy"]["connectionPool"] == {
        "tcp": {"maxConnections": 100}, "http": {"http1MaxPendingRequests": 1}}


@pytest.mark.parametrize(("kwargs", "field", "value"), [
    ({"max_connections": 0}, "max_connections", 0),
    ({"http2_max_requests": -4}, "http2_max_requests", -4),
    ({"max_retries": "3"}, "max_retries", "3"),
    ({"connect_timeout": "fast"}, "connect_timeout", "fast"),
    ({"idle_timeout": "0s"}, "idle_timeout", "0s"),
    ({}, "max_connections", None),
])
def test_bad_connection_pool_parameters_are_refused_naming_them(dr, kwargs, field, value):
    err = refused(traffic.set_connection_pool, dr, **kwargs)
    assert (err.field, err.value) == (field, value)


# --- subsets ----------------------------------------------------------------------------------

def test_ensure_subset_adds_a_missing_subset(dr):
    change = traffic.ensure_subset(dr, "v4")
    assert change.after["spec"]["subsets"][-1] == {"name": "v4", "labels": {"version": "v4"}}
    assert "+  - name: v4\n" in change.diff()


def test_ensure_subset_with_its_own_version_label(dr):
    after = traffic.ensure_subset(dr, "canary", version_label="2.1.0").after
    assert after["spec"]["subsets"][-1] == {"name": "canary", "labels": {"version": "2.1.0"}}


def test_ensure_subset_that_exists_with_the_same_labels_changes_nothing(dr):
    assert not traffic.ensure_subset(dr, "v2").changed


def test_ensure_subset_creates_the_subset_list(dr):
    del dr["spec"]["subsets"]
    assert traffic.ensure_subset(dr, "v1").after["spec"]["subsets"] == [
        {"name": "v1", "labels": {"version": "v1"}}]


def test_ensure_subset_refuses_an_existing_subset_with_other_labels(dr):
    err = refused(traffic.ensure_subset, dr, "v2", version_label="v2-beta")
    assert (err.field, err.value) == ("name", "v2")
    assert "{'version': 'v2'}" in err.problem


@pytest.mark.parametrize(("name", "label", "field", "value"), [
    ("V4", None, "name", "V4"),
    ("v4.1", None, "name", "v4.1"),
    ("v4", "bad label!", "version_label", "bad label!"),
    ("v4", "x" * 64, "version_label", "x" * 64),
])
def test_bad_subset_parameters_are_refused_naming_them(dr, name, label, field, value):
    err = refused(traffic.ensure_subset, dr, name, version_label=label)
    assert (err.field, err.value) == (field, value)


# --- rollback ---------------------------------------------------------------------------------

def test_restore_undoes_a_whole_rollout_but_keeps_other_peoples_changes(vs):
    snapshot = istio.managed_fields(vs)
    current = vs
    for step in (lambda o: traffic.set_canary_weight(o, 50),
                 lambda o: traffic.add_match_route(o, name="testers", header="x-c", value="1"),
                 lambda o: traffic.set_mirror(o, percentage=10),
                 lambda o: traffic.set_fault(o, delay="1s")):
        current = step(current).after
    current["metadata"]["labels"]["touched-by"] = "someone-else"
    current["metadata"]["resourceVersion"] = "9999"
    change = traffic.restore_managed_fields(current, snapshot)
    assert change.after["spec"]["http"] == vs["spec"]["http"]
    assert change.after["metadata"]["labels"]["touched-by"] == "someone-else"
    assert change.after["metadata"]["resourceVersion"] == "9999"
    assert change.params == {"fields": ["http"]}


def test_restore_removes_managed_fields_absent_from_the_snapshot(dr):
    snapshot = istio.managed_fields(dr)
    del snapshot["trafficPolicy"]
    assert "trafficPolicy" not in traffic.restore_managed_fields(dr, snapshot).after["spec"]


def test_restore_refuses_a_snapshot_with_unmanaged_fields(vs):
    err = refused(traffic.restore_managed_fields, vs, {"http": [], "hosts": ["x"]})
    assert (err.field, err.value) == ("snapshot", "hosts")
    assert refused(traffic.restore_managed_fields, vs, ["http"]).field == "snapshot"


# --- Change -----------------------------------------------------------------------------------

def test_unchanged_change_has_an_empty_diff_and_reports_so(vs):
    change = traffic.set_canary_weight(vs, 10)
    assert not change.changed
    assert change.diff() == ""
    assert change.to_dict()["changed"] is False
    assert change.to_dict()["before"] == change.to_dict()["after"]
