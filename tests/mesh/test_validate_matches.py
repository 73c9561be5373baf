"""The matches canary routes use, as the offline analyzer checks them: a catch-all rule that
hides the rules after it (and what the user loses by it), JWT-claim routing (a gateway's
business only), and header, cookie, query parameter and source label matches."""

import pytest

from canarykit.mesh.validate import has_errors, validate_object

GATEWAY = "istio-system/public-gateway"
CLAIM = "@request.auth.claims.group"


def virtual_service(http, **spec):
    return {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": "reviews"},
            "spec": {"hosts": ["reviews"], "http": http, **spec}}


def to(subset, host="reviews", **extra):
    return [{"destination": {"host": host, "subset": subset}, **extra}]


def rule(subset="v1", **fields):
    return {"route": to(subset), **fields}


def found(obj, level=None, code=None):
    return [m.message for m in validate_object(obj)
            if (level is None or m.level == level) and (code is None or m.code == code)]


def unused(*rules):
    """The IST0130 messages of a VirtualService holding `rules`."""
    return found(virtual_service(list(rules)), "Warning", "IST0130")


def match_errors(match, **spec):
    """The errors of a rule with this one match, before a catch-all."""
    return found(virtual_service([rule("v2", match=[match]), rule()], **spec), "Error")


JASON = {"headers": {"end-user": {"exact": "jason"}}}


# --- the common mistake: a catch-all before a matched rule ----------------------------------


def test_a_rule_behind_a_rule_without_match_names_the_catch_all_and_what_is_lost():
    shadowed = rule("v2", name="v2-route", match=[JASON], timeout="3s",
                    retries={"attempts": 3, "perTryTimeout": "1s", "retryOn": "5xx"})
    assert unused(rule(name="default"), shadowed) == [
        'VirtualService rule "v2-route" not used: rule "default" (#0) before it has no match '
        "and takes every request, so its route to subset v2, its retries (3 x 1s on 5xx) and "
        'its timeout 3s never apply; move "default" last.']


def test_the_message_lists_every_policy_the_hidden_rule_would_have_applied():
    split = to("v1", weight=90) + to("v2", host="ratings", weight=10)
    split[1]["destination"]["port"] = {"number": 9080}
    shadowed = {"match": [JASON], "route": split,
                "rewrite": {"uri": "/v2"},
                "fault": {"abort": {"httpStatus": 503, "percentage": {"value": 10}},
                          "delay": {"fixedDelay": "5s"}},
                "mirror": {"host": "reviews", "subset": "v3"}, "mirrorPercentage": {"value": 5},
                "headers": {"request": {"set": {"x-version": "v2"}},
                            "response": {"remove": ["x-debug"]}},
                "corsPolicy": {"allowOrigins": [{"exact": "https://shop.example"}]}}
    assert unused(rule(), shadowed) == [
        "VirtualService rule #1 not used: rule #0 before it has no match and takes every "
        "request, so its route to subset v1 (weight 90) and ratings:9080 subset v2 (weight 10), "
        "its rewrite (uri to /v2), its fault injection (abort 503 for 10%, delay 5s), its mirror "
        "to subset v3 for 5%, its header changes (x-version and x-debug) and its CORS policy "
        "never apply; move #0 last."]


@pytest.mark.parametrize("action, lost", [
    ({"redirect": {"authority": "new.example", "uri": "/v2", "redirectCode": 301}},
     "its redirect to new.example/v2 (301)"),
    ({"directResponse": {"status": 503}}, "its direct response 503"),
    ({"delegate": {"name": "reviews-v2", "namespace": "team"}},
     "its delegation to reviews-v2"),
])
def test_a_hidden_redirect_direct_response_or_delegation_is_named(action, lost):
    assert unused(rule(), {"match": [JASON], **action}) == [
        "VirtualService rule #1 not used: rule #0 before it has no match and takes every "
        f"request, so {lost} never applies; move #0 last."]


def test_a_rule_behind_a_match_everything_rule_names_that_match():
    everything = rule(name="all", match=[{"name": "root", "uri": {"prefix": "/"}}])
    assert unused(everything, rule("v2", match=[JASON])) == [
        'VirtualService rule #1 not used: rule "all" (#0) before it has match "root", which '
        'takes every request, so its route to subset v2 never applies; move "all" last.']


def test_a_second_rule_without_match_is_told_only_the_last_can_have_none():
    assert unused(rule(), rule("v2")) == [
        "VirtualService rule #1 not used: rule #0 before it has no match and takes every "
        "request, so its route to subset v2 never applies; only the last rule can have no "
        "matches."]


def test_each_hidden_rule_gets_one_message_naming_the_first_catch_all():
    messages = unused(rule(name="default"), rule("v2", match=[JASON], name="jason"),
                      rule("v3", match=[{"uri": {"prefix": "/beta"}}], name="beta"))
    assert [m.split(":")[0] for m in messages] == [
        'VirtualService rule "jason" not used', 'VirtualService rule "beta" not used']
    assert all('rule "default" (#0) before it has no match' in m for m in messages)


def test_a_rule_of_only_repeated_matches_says_what_it_loses():
    assert unused(rule("v2", match=[JASON]), rule("v3", match=[JASON], timeout="1s"), rule()) == [
        "VirtualService rule #1 not used: each of its matches repeats a match of an earlier "
        "rule, so its route to subset v3 and its timeout 1s never apply."]


def test_retries_set_to_zero_attempts_are_named_as_none():
    [message] = unused(rule(), rule("v2", match=[JASON], retries={"attempts": 0}))
    assert "so its route to subset v2 and its retries (none) never apply" in message


def test_many_hidden_destinations_are_listed_a_few_and_counted():
    routes = [{"destination": {"host": "reviews", "subset": f"v{n}"}, "weight": 5}
              for n in range(20)]
    [message] = unused(rule(), {"match": [JASON], "route": routes})
    assert "subset v4 (weight 5) and 15 more never applies" in message
    assert len(message) < 400


def test_a_hidden_tcp_rule_names_its_destination_too():
    tcp = [{"route": to("v1")}, {"match": [{"port": 9000}], "route": to("v2")}]
    vs = virtual_service([rule()], tcp=tcp)
    assert found(vs, code="IST0130") == [
        "VirtualService rule #1 not used: rule #0 before it has no match and takes every "
        "request, so its route to subset v2 never applies; move #0 last."]


def test_a_hidden_rule_with_malformed_policies_is_still_described():
    shadowed = {"match": [JASON], "route": to("v2"), "retries": "three", "fault": 5,
                "headers": {"request": "x"}, "timeout": ["3s"]}
    [message] = unused(rule(), shadowed)
    assert ("its route to subset v2, its retries, its timeout ['3s'], its fault injection and "
            "its header changes never apply") in message


def test_a_timeout_that_is_not_a_string_is_refused_not_raised():
    assert found(virtual_service([rule(timeout=["3s"])]), "Error") == [
        "spec.http[0].timeout: must be a duration such as 100ms, 1.5s or 1h30m (got ['3s'])"]


def test_the_catch_all_placed_last_hides_nothing():
    assert unused(rule("v2", match=[JASON]), rule(name="default")) == []


# --- JWT-claim routing: only a gateway sees the claims --------------------------------------


@pytest.mark.parametrize("gateways", [None, ["mesh"]])
@pytest.mark.parametrize("field", ["headers", "withoutHeaders"])
def test_a_claim_match_on_a_mesh_bound_service_is_refused_naming_rule_and_header(gateways,
                                                                                field):
    spec = {"gateways": gateways} if gateways else {}
    beta = rule("v2", name="beta", match=[{field: {CLAIM: {"exact": "beta"}}}])
    assert found(virtual_service([beta, rule()], **spec), "Error", "IST0106") == [
        f"spec.http[0].match[0].{field}.{CLAIM}: JWT claim routing works only on a gateway: "
        'sidecars never see the claims, so rule "beta" never matches; bind the VirtualService '
        "to a gateway (spec.gateways)"]


@pytest.mark.parametrize("claim", [CLAIM, "@request.auth.claims.realm.role",
                                   "@request.auth.claims[realm][role]"])
@pytest.mark.parametrize("string_match", [{"exact": "beta"}, {"prefix": "beta-"},
                                          {"regex": "beta|canary"}])
def test_a_claim_match_on_a_gateway_bound_service_is_accepted(claim, string_match):
    vs = virtual_service([rule("v2", match=[{"headers": {claim: string_match}}]), rule()],
                         gateways=[GATEWAY])
    assert validate_object(vs) == []


def test_a_claim_match_bound_to_mesh_and_gateway_warns_it_works_only_at_the_gateway():
    vs = virtual_service([rule("v2", name="beta", match=[{"headers": {CLAIM: {"exact": "b"}}}]),
                          rule()], gateways=["mesh", GATEWAY])
    messages = validate_object(vs)
    assert not has_errors(messages)
    assert [(m.level, m.code, m.message) for m in messages] == [
        ("Warning", "CK0006",
         f'spec.http[0].match[0].headers.{CLAIM}: rule "beta" matches a JWT claim, which works '
         f"only at gateway {GATEWAY}: in the mesh sidecars never see the claims, so there the "
         "match never applies")]


def test_a_claim_match_kept_to_the_gateway_by_its_own_gateways_gives_no_warning():
    match = {"headers": {CLAIM: {"exact": "beta"}}, "gateways": [GATEWAY]}
    vs = virtual_service([rule("v2", match=[match]), rule()], gateways=["mesh", GATEWAY])
    assert validate_object(vs) == []


@pytest.mark.parametrize("name", ["@request.auth.claims", "@request.auth.claims.",
                                  "@request.auth.claims.realm..role", "@request.auth.claims[]",
                                  "@request.auth.claims[realm]["])
def test_a_claim_header_naming_no_claim_is_refused(name):
    [error] = match_errors({"headers": {name: {"exact": "beta"}}}, gateways=[GATEWAY])
    assert error.startswith("spec.http[0].match[0].headers.")
    assert ": JWT claim header must name a claim, no part empty: @request.auth.claims.NAME, "\
           f".a.b or [a][b] (got {name!r})" in error


def test_a_claim_match_without_exact_prefix_or_regex_is_refused():
    vs = virtual_service([rule("v2", match=[{"headers": {CLAIM: {}}}]), rule()],
                         gateways=[GATEWAY])
    assert found(vs, "Error") == [
        f"spec.http[0].match[0].headers.{CLAIM}: JWT claim match must set exact, prefix or "
        "regex: Istio matches a claim by its value, never by presence alone (got {})"]


# --- header, cookie and query parameter matches ---------------------------------------------


@pytest.mark.parametrize("string_match", [{"exact": "jason"}, {"prefix": "jas"},
                                          {"regex": "jason|tester-[0-9]+"}, {}])
@pytest.mark.parametrize("field", ["headers", "withoutHeaders", "queryParams"])
def test_matches_by_exact_prefix_regex_or_presence_are_accepted(field, string_match):
    assert match_errors({field: {"end-user": string_match}}) == []


def test_a_cookie_only_route_is_accepted():
    cookie = {"headers": {"cookie": {"regex": "^(.*?;\\s*)?canary=always(;.*)?$"}}}
    assert validate_object(virtual_service([rule("v2", match=[cookie]), rule()])) == []


def test_a_cookie_regex_re2_refuses_is_refused_naming_the_field_and_pattern():
    [error] = match_errors({"headers": {"cookie": {"regex": "(?<=canary=)always"}}})
    assert error.startswith("spec.http[0].match[0].headers.cookie.regex: is not a valid RE2 "
                            "regular expression: ")
    assert error.endswith("(got '(?<=canary=)always')")


@pytest.mark.parametrize("field", ["headers", "withoutHeaders", "queryParams"])
def test_a_match_with_two_of_exact_prefix_and_regex_is_refused(field):
    assert match_errors({field: {"user": {"prefix": "j", "regex": "j.*"}}}) == [
        f"spec.http[0].match[0].{field}.user: must set only one of exact, prefix or regex "
        "(got ['prefix', 'regex'])"]


@pytest.mark.parametrize("field", ["headers", "withoutHeaders", "queryParams"])
def test_a_misspelt_string_match_key_is_refused_not_left_to_match_on_presence(field):
    assert match_errors({field: {"user": {"exakt": "jason"}}}) == [
        f"spec.http[0].match[0].{field}.user.exakt: is not a field of a string match (exact, "
        "prefix or regex) (got 'exakt')"]


def test_an_empty_prefix_on_a_query_parameter_is_refused():
    assert match_errors({"queryParams": {"canary": {"prefix": ""}}}) == [
        "spec.http[0].match[0].queryParams.canary.prefix: must not be empty"]


def test_a_query_parameter_value_must_be_a_string():
    assert match_errors({"queryParams": {"canary": {"exact": True}}}) == [
        "spec.http[0].match[0].queryParams.canary.exact: must be a string (got True)"]


# --- sourceLabels: the client workload's labels ---------------------------------------------


def test_source_labels_with_kubernetes_keys_and_values_are_accepted():
    labels = {"app": "productpage", "app.kubernetes.io/version": "v1.2_3"}
    assert match_errors({"sourceLabels": labels}) == []


@pytest.mark.parametrize("key", ["Bad Key", "-app", "a/b/c", "x" * 64, "Example.com/app", ""])
def test_a_source_label_key_kubernetes_refuses_is_refused_naming_it(key):
    [error] = match_errors({"sourceLabels": {key: "v1"}})
    assert error.startswith("spec.http[0].match[0].sourceLabels.")
    assert error.endswith(": is not a Kubernetes label key (letters, digits, '-', '_' and '.', "
                          f"at most 63, optionally after a DNS prefix and '/') (got {key!r})")


@pytest.mark.parametrize("value, problem", [
    ("v 1", "is not a Kubernetes label value"),
    ("-v1", "is not a Kubernetes label value"),
    ("v1.", "is not a Kubernetes label value"),
    ("v" * 64, "is not a Kubernetes label value"),
    (1, "must be a string"),
    (None, "label value must be a string"),
])
def test_a_source_label_value_kubernetes_refuses_is_refused_naming_it(value, problem):
    [error] = match_errors({"sourceLabels": {"version": value}})
    assert error.startswith(f"spec.http[0].match[0].sourceLabels.version: {problem}")
    assert error.endswith(f"(got {value!r})")


def test_an_empty_source_label_value_is_a_warning_as_istio_accepts_it():
    vs = virtual_service([rule("v2", match=[{"sourceLabels": {"app": ""}}]), rule()])
    messages = validate_object(vs)
    assert not has_errors(messages)
    assert [(m.level, m.code, m.message) for m in messages] == [
        ("Warning", "CK0007",
         "spec.http[0].match[0].sourceLabels.app: empty label value: the rule applies only to "
         "clients whose label app is set to the empty string; Istio accepts it, but it is "
         "usually a value left out")]


def test_source_labels_must_be_a_mapping():
    assert match_errors({"sourceLabels": ["app=productpage"]}) == [
        "spec.http[0].match[0].sourceLabels: must be a mapping (got ['app=productpage'])"]

