"""What kind of failure a `requests` exception is, decided once for every HTTP client here.

Prometheus queries, notification channels and webhooks each say it in their own words, but
which failure it was (TLS, timeout, refused, unknown host, connection dropped) is one rule.
"""

from __future__ import annotations

TLS, TIMEOUT, REFUSED, UNRESOLVED, DROPPED, OTHER = (
    "tls", "timeout", "refused", "unresolved", "dropped", "other")


def failure_kind(exc: BaseException) -> str:
    """One of TLS, TIMEOUT, REFUSED, UNRESOLVED, DROPPED, OTHER (requests imported here)."""
    import requests

    text = str(exc)
    if isinstance(exc, requests.exceptions.SSLError):
        return TLS
    if isinstance(exc, requests.exceptions.Timeout) or "timed out" in text.lower():
        return TIMEOUT
    if "Connection refused" in text or "Errno 111" in text:
        return REFUSED
    if ("Name or service not known" in text or "nodename nor servname" in text
            or "Failed to resolve" in text):
        return UNRESOLVED
    if "Connection reset" in text or "RemoteDisconnected" in text or "aborted" in text:
        return DROPPED
    return OTHER
