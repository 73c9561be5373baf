"""Specification of canarykit.core.names: what a name may look like, and what a credential
looks like, so that names are always taken as data and credentials are never recorded."""

from __future__ import annotations

import itertools
import random
import string
import time

import pytest

from canarykit.core import names
from canarykit.core.errors import BadInput
from canarykit.rollout.runbook import check_parameters

# Words that begin like token prefixes (sk, gho, ghp, AKIA, xox, eyJ ...) or name secrets.
WORDS = [
    "sky", "skyline", "sketch", "sketchbook", "ski", "sk", "ghost", "gho", "ghp", "ghu", "ghs",
    "akia", "asia", "aiza", "xoxb", "xoxp", "eyj", "glpat", "github", "pat", "proj", "live",
    "token", "secret", "key", "bearer", "basic", "auth", "password", "client", "data",
    "payment", "frontend", "writer", "reviews", "ratings", "api", "gateway", "canary", "v2",
]
REGRESSIONS = ["skyline-frontend", "ghost-writer", "sketchbook"]


def _service_names() -> list[str]:
    pairs = [f"{a}-{b}" for a, b in itertools.permutations(WORDS[:24], 2)]
    tails = [f"{a}-{b}" for a, b in itertools.product(WORDS[:24], WORDS[24:])]
    numbered = [f"{word}-{n}" for word in WORDS for n in (1, 2, 10, 2024, 12345678)]
    threes = ["-".join(words) for words in itertools.combinations(WORDS[:16], 3)]
    return sorted(set(WORDS + pairs + tails + numbered + threes + REGRESSIONS + [
        "client-key-data-exporter", "sk-payments-frontend-canary-release", "token-refresher",
        "glpat-abcdefghijklmnopqrstuvwx", "xoxb-ops-bot", "akiaiosfodnn7example-reader",
    ]))


SERVICE_NAMES = _service_names()
FQDNS = [f"{name}.{ns}.svc.cluster.local" for name, ns in zip(SERVICE_NAMES[::7], WORDS * 40,
                                                                strict=False)]
FQDNS += [f"{name}.{ns}" for name, ns in zip(SERVICE_NAMES[3::11], WORDS * 40, strict=False)]


def test_the_name_lists_are_large_and_hold_the_regressions():
    assert len(SERVICE_NAMES) > 1000 and len(FQDNS) > 200
    assert set(REGRESSIONS) <= set(SERVICE_NAMES)


def test_service_names_are_dns_labels():
    assert [n for n in SERVICE_NAMES if not names.is_dns1123_label(n)] == []
    for name in SERVICE_NAMES:
        assert names.check_dns_label("service", name) == name


@pytest.mark.parametrize("field", ["service", "namespace", "release", "subset", "route"])
def test_no_service_name_is_taken_for_a_credential(field):
    refused = []
    for name in SERVICE_NAMES:
        try:
            check_parameters({field: name})
        except BadInput:
            refused.append(name)
    assert refused == []


@pytest.mark.parametrize("name", REGRESSIONS)
def test_names_that_begin_like_a_token_prefix_are_accepted(name):
    # They were refused: `sk`, `gho`, `ghp` followed by 8 characters was taken for a token.
    parameters = {"service": name, "namespace": name, "release": name, "canary": name}
    assert check_parameters(parameters) == parameters
    assert not names.looks_like_credential(name)


def test_fully_qualified_service_hosts_are_accepted():
    assert [h for h in FQDNS if not names.is_dns1123_subdomain(h)] == []
    for host in FQDNS + ["reviews.default.svc.cluster.local", "reviews.default", "reviews"]:
        assert names.check_service_host("SERVICE", host) == host
        assert check_parameters({"service": host}) == {"service": host}


@pytest.mark.parametrize("host", [
    "Reviews", "reviews..default", "reviews.default.", ".reviews", "-reviews", "reviews_v2",
    "reviews.default\n", "a" * 64 + ".default", "reviews/default", "",
])
def test_a_service_host_that_is_not_a_dns_name_is_refused(host):
    with pytest.raises(BadInput) as refused:
        names.check_service_host("SERVICE", host)
    assert (refused.value.field, refused.value.value) == ("SERVICE", host)


@pytest.mark.parametrize("name", ["V2", "-v2", "v2-", "v_2", "a" * 64, "v2\n", "", "v2.1", 2])
def test_a_name_that_is_not_a_dns_label_is_refused_naming_field_and_value(name):
    with pytest.raises(BadInput) as refused:
        names.check_dns_label("subset", name)
    assert (refused.value.field, refused.value.value) == ("subset", name)


@pytest.mark.parametrize("host", [
    "reviews", "reviews.default", "reviews.default.svc", "reviews.default.svc.cluster.local",
    "Reviews.Default.svc.cluster.local.",
])
def test_every_form_of_a_service_host_has_the_same_fqdn(host):
    assert names.host_fqdn(host, "default") == "reviews.default.svc.cluster.local"
    assert names.service_name(names.host_fqdn(host, "default")) == "reviews"


@pytest.mark.parametrize("short", ["reviews", "reviews.prod", "reviews.prod.svc"])
def test_a_host_without_a_domain_is_the_service_in_a_cluster_with_its_own_domain(short):
    assert names.same_host(short, "reviews.prod.svc.corp.example", "prod")
    assert names.same_host("reviews.prod.svc.corp.example", short, "prod")
    assert not names.same_host(short, "reviews.prod.svc.clusterset.local", "prod")
    assert not names.same_host(short, "ratings.prod.svc.corp.example", "prod")
    assert not names.same_host(short, "reviews.shop.svc.corp.example", "prod")
    assert not names.same_host("reviews.prod.svc.cluster.local",
                               "reviews.prod.svc.corp.example", "prod")


def test_hosts_outside_the_namespace_or_the_mesh_keep_their_own_fqdn():
    assert names.host_fqdn("reviews", "shop") == "reviews.shop.svc.cluster.local"
    assert names.host_fqdn("api.example.com", "default") == "api.example.com"
    assert names.host_fqdn("*.example.com", "default") == "*.example.com"


# --- a trailing newline is not part of any name --------------------------------------------

@pytest.mark.parametrize(("check", "good"), [
    (names.is_dns1123_label, "v2"),
    (names.is_dns1123_subdomain, "reviews.default"),
    (names.is_route_name, "canary-internal"),
    (names.is_label_value, "v2.1_rc"),
    (names.is_header_name, "x-canary"),
    (names.is_cookie_name, "session"),
    (names.is_query_parameter_name, "user"),
    (names.is_label_name, "destination_version"),
    (names.is_env_name, "PROM_TOKEN"),
    (names.is_metric_name, "checkout-errors"),
])
def test_a_name_is_matched_whole_so_a_trailing_newline_is_refused(check, good):
    assert check(good)
    assert not check(good + "\n")
    assert not check("\n" + good)
    assert not check(None)


def test_the_route_name_with_a_trailing_newline_is_refused():
    # It passed validation: `^...$` with re.match accepts "canary-internal\n".
    assert names.is_route_name("canary-internal")
    assert not names.is_route_name("canary-internal\n")


@pytest.mark.parametrize(("check", "good", "bad"), [
    (names.is_route_name, ["jason", "Canary_1.2", "a" * 253], ["has space", "-x", "x.", "a" * 254]),
    (names.is_label_value, ["v1", "V1.2_rc-3"], ["", "-v1", "a" * 64, "v 1"]),
    (names.is_header_name, ["x-canary", "X-Canary", "end-user"], ["", "x canary", "x:y"]),
    (names.is_cookie_name, ["beta", "__Host-id"], ["", "be ta", "a;b", "a=b"]),
    (names.is_query_parameter_name, ["user", "x[]"], ["", "a b", "a&b", "a=b", "a#", "a?"]),
    (names.is_label_name, ["le", "_x", "destination_version"], ["", "1x", "a-b"]),
    (names.is_metric_name, ["errors", "p99-ms_2"], ["", "Errors", "-x", "x_"]),
])
def test_what_each_kind_of_name_may_hold(check, good, bad):
    assert [name for name in good if not check(name)] == []
    assert [name for name in bad if check(name)] == []


# --- credentials -------------------------------------------------------------------------

_RNG = random.Random(20240501)
_B62 = string.ascii_letters + string.digits


def _random(length: int, alphabet: str = _B62) -> str:
    return "".join(_RNG.choice(alphabet) for _ in range(length))


TOKENS = {
    "github classic": "ghp_" + _random(36),
    "github oauth": "gho_" + _random(36),
    "github user-to-server": "ghu_" + _random(36),
    "github server-to-server": "ghs_" + _random(36),
    "github refresh": "ghr_" + _random(36),
    "github fine-grained": "github_pat_" + _random(82, _B62 + "_"),
    "gitlab": "glpat-" + _random(20),
    "slack bot": f"xoxb-{_random(12, string.digits)}-{_random(13, string.digits)}-{_random(24)}",
    "slack user": "xoxp-" + "-".join(_random(12, string.digits) for _ in range(3))
                  + "-" + _random(32, "0123456789abcdef"),
    "aws access key": "AKIA" + _random(16, string.ascii_uppercase + string.digits),
    "aws session key": "ASIA" + _random(16, string.ascii_uppercase + string.digits),
    "openai": "sk-" + _random(48),
    "openai project": "sk-proj-" + _random(120, _B62 + "-_"),
    "stripe secret": "sk_live_" + _random(24),
    "stripe restricted": "rk_live_" + _random(24),
    "jwt": "eyJ" + _random(20) + ".eyJ" + _random(40) + "." + _random(43, _B62 + "-_"),
    "google api key": "AIza" + _random(35, _B62 + "-_"),
    "bearer header": "Bearer " + _random(40),
    "basic header": "Basic YWRtaW46aHVudGVyMg==",
    "authorization header": "Authorization: Bearer " + _random(40),
    "pem key": "-----BEGIN RSA PRIVATE KEY-----\nMIIEow" + _random(60) + "\n",
    "kubeconfig key": "users:\n- name: admin\n  user:\n    client-key-data: " + _random(60),
    "kubeconfig token": "users:\n- user:\n    token: " + _random(30),
    "url with password": "https://admin:" + _random(12) + "@prometheus.example.com:9090",
}


@pytest.mark.parametrize("kind", TOKENS)
def test_each_real_token_format_is_refused_naming_the_parameter_never_the_value(kind):
    token = TOKENS[kind]
    assert names.looks_like_credential(token)
    with pytest.raises(BadInput) as refused:
        check_parameters({"service": "reviews", "note": token})
    assert refused.value.field == "note"
    assert refused.value.value == "<hidden>"
    assert token not in str(refused.value)
    assert token.split()[-1] not in str(refused.value)


@pytest.mark.parametrize("kind", [k for k in TOKENS if "header" not in k and "kube" not in k])
def test_a_token_inside_a_sentence_or_a_nested_parameter_is_refused(kind):
    sentence = f"rotated {TOKENS[kind]} after the incident"
    with pytest.raises(BadInput) as refused:
        check_parameters({"prometheus": {"headers": {"x-note": sentence}}})
    assert refused.value.field == "prometheus.headers.x-note"
    with pytest.raises(BadInput) as refused:
        check_parameters({"hosts": ["reviews", sentence]})
    assert refused.value.field == "hosts[1]"


@pytest.mark.parametrize("text", [
    "ghp_" + "a" * 35,  # one character short of a GitHub token
    "sk-" + "a" * 40,  # a real key's random part has capitals
    "glpat-" + "b" * 20,
    "Basic connectivity verified", "Bearer of bad news", "https://prometheus:9090/api",
    "token refresh is handled by the sidecar", "eyJ-decoder", "AKIA-reports",
])
def test_text_that_only_resembles_a_token_is_accepted(text):
    assert not names.looks_like_credential(text)
    assert check_parameters({"note": text}) == {"note": text}


@pytest.mark.parametrize("name", [
    "token", "prometheus_password", "api_key", "apiKey", "client_secret", "bearer", "credentials",
    "token_env\n",
])
def test_a_parameter_named_for_a_credential_is_refused_when_it_has_a_value(name):
    assert names.names_a_credential(name)
    with pytest.raises(BadInput) as refused:
        check_parameters({name: "hunter2"})
    assert refused.value.field == name and "hunter2" not in str(refused.value)
    assert check_parameters({name: ""}) == {name: ""}


@pytest.mark.parametrize("name", [
    "prometheus_bearer_token_env", "bearer_token_file", "basic_auth_password_env",
    "token_files[0]", "service", "release", "keyspace",
])
def test_a_parameter_that_names_where_a_credential_is_kept_is_accepted(name):
    assert not names.names_a_credential(name)
    assert check_parameters({name: "PROM_TOKEN"}) == {name: "PROM_TOKEN"}


@pytest.mark.parametrize("text", ["a" * 200_000, "sk-" * 70_000, "a://" * 50_000,
                                  "Bearer " + "a" * 200_000 + " x", " \n" * 100_000])
def test_a_long_value_is_checked_in_linear_time(text):
    # A pattern retried from every position scans the rest of the value each time: minutes.
    started = time.perf_counter()
    assert not names.looks_like_credential(text)
    assert time.perf_counter() - started < 2
