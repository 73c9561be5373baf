"""When a request to the API server is sent again, and when it is not.

A busy API server answers late, or 429 (API Priority and Fairness turned the request away before
doing anything) or 5xx; a CronJob step that ends its release on the first such answer turns a
slow minute of the control plane into a failed release. So a request is tried again, with
jittered exponential backoff (or the server's `Retry-After`), within a budget of two request
timeouts, when sending it again cannot do anything twice:

- a read (GET, HEAD) or a server-side dry run: after no answer, 429 or 5xx;
- any other request: only after 429, which API Priority and Fairness answers before doing
  anything. A write that got no answer or a 5xx (an etcd timeout may still land) is never
  re-sent here: whether it landed is for the caller to find out (see `client.apply_change`).

Each try after the first gets only what is left of the budget as its timeout, so one request
never takes longer than two request timeouts.

Each retry is said on stderr (a kernel's stderr is the release's kernels.log), naming the
request by method and path only: the host part of a URL may carry what is not for logs.
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import urllib3
from kubernetes.client.exceptions import ApiException

MAX_ATTEMPTS = 4  # the first try and three more
FIRST_DELAY = 0.5  # seconds; then 1, 2 (each with up to half again of jitter)
MAX_RETRY_AFTER = 10.0  # a server's Retry-After is honoured up to this many seconds
RETRIED_STATUSES = (429, 500, 502, 503, 504)
SAFE_METHODS = ("GET", "HEAD")
# What a request that got no answer raises (timeouts, refused or reset connections, TLS).
NO_ANSWER = (urllib3.exceptions.HTTPError, OSError)


def is_safe(method: str, url: str) -> bool:
    """Whether sending the request twice does nothing twice."""
    query = urlsplit(url).query
    return method.upper() in SAFE_METHODS or "dryRun=All" in query.split("&")


def retry_after(response: Any) -> float | None:
    value = str((getattr(response, "headers", None) or {}).get("Retry-After", "")).strip()
    return min(float(value), MAX_RETRY_AFTER) if value.isdigit() else None


def answer_retried(method: str, url: str, response: Any) -> bool:
    status = getattr(response, "status", 200)
    if status not in RETRIED_STATUSES:
        return False
    return is_safe(method, url) or status == 429


def backoff(attempt: int) -> float:
    """The pause after failed attempt `attempt` (1, 2, ...): doubling, jittered so that many
    runners turned away together do not come back together."""
    return FIRST_DELAY * 2 ** (attempt - 1) * (1 + random.random() / 2)


def _describe(failure: Any) -> str:
    if isinstance(failure, BaseException):
        reason = getattr(failure, "reason", None) or failure
        if isinstance(reason, (urllib3.exceptions.TimeoutError, TimeoutError)):
            return "no answer in time"
        return f"no answer ({type(reason).__name__})"
    return f"{failure.status} {failure.reason}"


def budget_for(timeout: float) -> float:
    """Seconds within which one request may be tried again: a request that timed out is tried
    once more; quick refusals (with the 30 s default) up to MAX_ATTEMPTS times."""
    return 2 * timeout


def send(request: Callable[..., Any], method: str, url: str, budget: float,
         *args: Any, **kwargs: Any) -> Any:
    """`request(method, url, ...)`, tried again as the module says while `budget` (seconds
    since the first try) lasts; the last answer or error is the caller's."""
    began, attempt = time.monotonic(), 0
    while True:
        attempt += 1
        failure: Any
        left = budget - (time.monotonic() - began)
        if attempt > 1 and isinstance(kwargs.get("_request_timeout"), int | float):
            kwargs["_request_timeout"] = min(kwargs["_request_timeout"], max(left, 0.1))
        try:
            response = request(method, url, *args, **kwargs)
        except ApiException as exc:  # the client's word for a TLS failure: nothing was served
            if exc.status != 0 or not is_safe(method, url) or attempt == MAX_ATTEMPTS:
                raise
            failure, delay = exc, backoff(attempt)
        except NO_ANSWER as exc:
            if not is_safe(method, url) or attempt == MAX_ATTEMPTS:
                raise
            failure, delay = exc, backoff(attempt)
        else:
            if attempt == MAX_ATTEMPTS or not answer_retried(method, url, response):
                return response
            failure, delay = response, retry_after(response) or backoff(attempt)
        if time.monotonic() - began + delay > budget:
            if isinstance(failure, BaseException):
                raise failure
            return failure
        if not isinstance(failure, BaseException):
            _discard(failure)
        sys.stderr.write(f"canarykit: {method} {urlsplit(url).path}: {_describe(failure)}; "
                         f"trying again in {delay:.1f} s (attempt {attempt + 1} of "
                         f"{MAX_ATTEMPTS})\n")
        time.sleep(delay)


def _discard(response: Any) -> None:
    """Read a refused answer's (small) body, so its connection goes back to the pool."""
    try:
        response.read()
    except Exception:  # noqa: BLE001 (a body we are throwing away)
        pass
