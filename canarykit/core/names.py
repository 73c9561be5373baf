"""Names are data: the one place that says what a name, label or header may look like, and
what a credential looks like so that it is never recorded.

Every pattern is used whole (`fullmatch`): `re.match` with `^...$` lets a trailing newline
through, and a name with a newline in it is not the name a user meant.
"""

from __future__ import annotations

import re
from typing import Any

from canarykit.core.errors import BadInput

CLUSTER_SUFFIX = ".svc.cluster.local"

_DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
# Letters, digits, '-', '_' and '.', starting and ending with a letter or digit: Kubernetes
# label values, and Istio route names.
_LABEL_VALUE = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
# An RFC 9110 token: what HTTP header names and cookie names are made of.
_HTTP_TOKEN = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_METRIC_NAME = re.compile(r"[a-z0-9]([-a-z0-9_]*[a-z0-9])?")
_QUERY_PARAMETER = re.compile(r"[^\s&=#?]+")


def is_dns1123_label(text: Any) -> bool:
    """Whether `text` is a DNS-1123 label (what Kubernetes requires of service, namespace and
    Istio of subset names)."""
    return isinstance(text, str) and len(text) <= 63 and _DNS1123_LABEL.fullmatch(text) is not None


def is_dns1123_subdomain(text: Any) -> bool:
    """Whether `text` is a DNS-1123 subdomain: dot-separated labels, at most 253 characters."""
    return (isinstance(text, str) and len(text) <= 253
            and _DNS1123_SUBDOMAIN.fullmatch(text) is not None
            and all(len(label) <= 63 for label in text.split(".")))


def check_dns_label(field_name: str, value: Any) -> str:
    """Refuse a service, namespace or subset name that is not a DNS-1123 label."""
    if not is_dns1123_label(value):
        raise BadInput(
            field_name,
            value,
            "must be a DNS-1123 label: lower-case letters, digits and '-', at most 63 "
            "characters, starting and ending with a letter or digit",
        )
    return value


def check_service_host(field_name: str, value: Any) -> str:
    """Refuse a service host that is not a DNS name; `reviews`, `reviews.default` and
    `reviews.default.svc.cluster.local` (what a kubectl user types) are all fine."""
    if not is_dns1123_subdomain(value):
        raise BadInput(
            field_name,
            value,
            "must be a service name or host such as reviews or reviews.default.svc.cluster.local"
            " (DNS-1123: lower-case letters, digits, '-' and '.')",
        )
    return value


def host_fqdn(host: str, namespace: str) -> str:
    """The fully qualified name Istio resolves `host` to from `namespace`.

    `reviews`, `reviews.default` and `reviews.default.svc` all mean
    `reviews.default.svc.cluster.local` when written in namespace `default` (`same_host`
    also knows a cluster whose DNS domain is another).
    """
    name = host.strip().lower().rstrip(".")
    if name.startswith("*") or name.endswith(CLUSTER_SUFFIX):
        return name
    parts = name.split(".")
    if name.endswith(".svc"):
        return name + ".cluster.local"
    if len(parts) == 1:
        return f"{name}.{namespace}{CLUSTER_SUFFIX}"
    if len(parts) == 2:
        return name + CLUSTER_SUFFIX
    return name


def same_host(a: str, b: str, namespace: str) -> bool:
    """Whether two hosts written in `namespace` name the same service. A host written
    without a domain (`reviews`, `reviews.prod`, `reviews.prod.svc`) takes the cluster's own,
    whatever it is, so it is the FQDN `reviews.prod.svc.corp.example` in a cluster with that
    domain; two FQDNs with different domains (`clusterset.local` among them) stay different."""
    full_a, full_b = host_fqdn(a, namespace), host_fqdn(b, namespace)
    if full_a == full_b:
        return True
    if _has_domain(a) == _has_domain(b):
        return False
    written = full_b if _has_domain(b) else full_a
    parts = written.split(".")
    return (len(parts) >= 4 and parts[2] == "svc"
            and ".".join(parts[3:]) not in ("cluster.local", "clusterset.local")
            and parts[:2] == (full_a if written is full_b else full_b).split(".")[:2])


def qualified(host: str, namespace: str) -> str:
    """`host` with its namespace but without a domain when it was written without one
    (`reviews` in prod is `reviews.prod.svc`), so hosts of two namespaces compare."""
    name = host.strip().lower().rstrip(".")
    if _has_domain(name) or name.startswith("*"):
        return name
    parts = name.split(".")
    return f"{parts[0]}.{parts[1] if len(parts) > 1 else namespace}.svc"


def _has_domain(host: str) -> bool:
    parts = host.strip().lower().rstrip(".").split(".")
    return len(parts) > 3 or len(parts) == 3 and parts[2] != "svc"


def service_name(host: str) -> str:
    """The service's own name in a host (`reviews` of `reviews.default.svc.cluster.local`)."""
    return host.split(".", 1)[0]


def host_namespace(host: str) -> str | None:
    """The namespace a Kubernetes service host names: `prod` of `reviews.prod`,
    `reviews.prod.svc` and `reviews.prod.svc.cluster.local` (any cluster domain); None for a
    short name or a host outside the cluster such as `api.example.com`."""
    parts = host.rstrip(".").split(".")
    if len(parts) == 2 or len(parts) >= 3 and parts[2] == "svc":
        return parts[1]
    return None


def service_namespace(field_name: str, host: str, namespace: str | None,
                      namespace_field: str = "namespace") -> str | None:
    """The namespace `host` names, else `namespace`: a user may give either, but an FQDN in
    one namespace with another namespace given is a mistake, refused naming both."""
    named = host_namespace(host)
    if named and namespace and named != namespace:
        raise BadInput(field_name, host, f"names namespace {named!r} but {namespace_field} is "
                       f"{namespace!r}: give one of them, or the same one")
    return named or namespace or None


def split_service(field_name: str, service: Any, namespace: str | None = None,
                  namespace_field: str = "namespace") -> tuple[str, str | None]:
    """(name, namespace) of a Kubernetes service given as a short name (its namespace given
    apart, or None) or as an FQDN a kubectl user types: `reviews.prod`, `reviews.prod.svc`,
    `reviews.prod.svc.cluster.local`. Things named after the service use the short name."""
    if not isinstance(service, str):
        raise BadInput(field_name, service, "must be a string")
    if "." not in service:  # a short name: refused as the DNS-1123 label it must be
        check_dns_label(field_name, service)
    host = check_service_host(field_name, service.removesuffix("."))
    parts = host.split(".")
    if len(parts) > 1 and host_namespace(host) is None:
        raise BadInput(field_name, service, "is not a Kubernetes service: give NAME (with its "
                       "namespace), NAME.NAMESPACE or NAME.NAMESPACE.svc.cluster.local")
    check_dns_label(field_name, parts[0])
    found = service_namespace(field_name, host, namespace, namespace_field)
    if found is not None:
        check_dns_label(namespace_field if found == namespace else field_name, found)
    return parts[0], found


def host_domain(host: str) -> str | None:
    """What follows the namespace in a full service FQDN (`svc.cluster.local`), else None."""
    parts = host.rstrip(".").split(".")
    return ".".join(parts[2:]) if len(parts) >= 4 and parts[2] == "svc" else None


def is_label_value(text: Any) -> bool:
    """Whether `text` is a non-empty Kubernetes label value (such as a subset's `version`)."""
    return isinstance(text, str) and len(text) <= 63 and _LABEL_VALUE.fullmatch(text) is not None


def is_label_key(text: Any) -> bool:
    """Whether `text` is a Kubernetes label key: a name, optionally after a DNS prefix and '/'
    (`version`, `app.kubernetes.io/version`, `service.istio.io/canonical-revision`)."""
    if not isinstance(text, str):
        return False
    prefix, slash, name = text.rpartition("/")
    return is_label_value(name) and (not slash or is_dns1123_subdomain(prefix))


def is_route_name(text: Any) -> bool:
    """Whether `text` is an HTTP route name: label-value characters, at most 253."""
    return isinstance(text, str) and len(text) <= 253 and _LABEL_VALUE.fullmatch(text) is not None


def is_header_name(text: Any) -> bool:
    """Whether `text` is an HTTP header name (any case; Istio matches need lower case)."""
    return isinstance(text, str) and _HTTP_TOKEN.fullmatch(text) is not None


def is_cookie_name(text: Any) -> bool:
    """Whether `text` is a cookie name (the same token characters as a header name)."""
    return isinstance(text, str) and _HTTP_TOKEN.fullmatch(text) is not None


def is_query_parameter_name(text: Any) -> bool:
    """Whether `text` can name a URL query parameter unescaped."""
    return isinstance(text, str) and _QUERY_PARAMETER.fullmatch(text) is not None


def is_label_name(text: Any) -> bool:
    """Whether `text` is a Prometheus label name (used unquoted in PromQL)."""
    return isinstance(text, str) and _IDENTIFIER.fullmatch(text) is not None


def is_env_name(text: Any) -> bool:
    """Whether `text` is an environment variable name (how secrets are referenced)."""
    return isinstance(text, str) and _IDENTIFIER.fullmatch(text) is not None


def is_metric_name(text: Any) -> bool:
    """Whether `text` is a custom metric name: lower-case letters, digits, '-' and '_'."""
    return isinstance(text, str) and _METRIC_NAME.fullmatch(text) is not None


# --- credentials --------------------------------------------------------------------------
# Real token formats only, so a name a user gives is never taken for one. Most formats hold a
# character no DNS-1123 name has ('_', upper case, ':', '@', space). Of the others, sk- and
# glpat- need an upper-case letter in their random part (a real, base62, one has one all but
# always) and Slack's need a run of at least 8 digits after xoxb- (or xoxa-, xoxp-, ...).

_B62 = "A-Za-z0-9"
_BEFORE = r"(?<![A-Za-z0-9_-])"  # a token starts at a word boundary ...
_AFTER = r"(?![A-Za-z0-9_-])"  # ... and ends at one
_WITH_UPPER = r"(?=[A-Za-z0-9_-]*[A-Z])"
_CREDENTIAL_PATTERNS = (
    rf"gh[pousr]_[{_B62}]{{36}}",  # GitHub tokens
    r"github_pat_[A-Za-z0-9_]{82}",  # GitHub fine-grained token
    rf"glpat-{_WITH_UPPER}[A-Za-z0-9_-]{{20,}}",  # GitLab personal access token
    r"xox[abprs]-[0-9]{8,}-[0-9A-Za-z-]{8,}",  # Slack
    r"(?:AKIA|ASIA)[A-Z0-9]{16}",  # AWS access key id
    rf"sk-(?:proj-|svcacct-|admin-)?{_WITH_UPPER}[A-Za-z0-9_-]{{20,}}",  # OpenAI style
    rf"(?:sk|rk)_(?:live|test)_[{_B62}]{{10,}}",  # Stripe secret and restricted keys
    r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+",  # JWT
    r"AIza[A-Za-z0-9_-]{35}",  # Google API key
)
_CREDENTIAL = re.compile(_BEFORE + "(?:" + "|".join(_CREDENTIAL_PATTERNS) + ")" + _AFTER)
_CREDENTIAL_TEXT = re.compile(
    r"-----BEGIN [A-Z ]+-----"  # PEM key or certificate
    # an Authorization header value, alone on its line
    r"|(?m:^[ \t]*(?:(?:[Pp]roxy-)?[Aa]uthorization:[ \t]*)?(?:Bearer|Basic)[ \t]+"
    r"[A-Za-z0-9._~+/-]{8,}=*[ \t]*$)"
    r"|(?m:^[ \t-]*(?:client-key-data|token|password):[ \t]*\S)"  # kubeconfig (YAML) lines
    r"|(?<![A-Za-z0-9+.-])[A-Za-z][A-Za-z0-9+.-]*://[^/@\s:]+:[^/@\s]+@"  # user:password@ URL
)
_CREDENTIAL_NAME = re.compile(r"token|password|passwd|secret|api[_-]?key|credential|bearer", re.I)
# names a variable or a file that holds one (an item of a list of them too: `token_files[0]`)
_REFERENCE_NAME = re.compile(r".*_(env|file)s?(\[[0-9]+\])*")


def looks_like_credential(value: str) -> bool:
    """Whether `value` holds a token, key, password or private key in a known format."""
    return bool(_CREDENTIAL.search(value) or _CREDENTIAL_TEXT.search(value))


def names_a_credential(name: str) -> bool:
    """Whether a parameter called `name` would hold a credential itself; `..._env` and
    `..._file` only name where one is kept, and are fine."""
    return bool(_CREDENTIAL_NAME.search(name)) and not _REFERENCE_NAME.fullmatch(name)
