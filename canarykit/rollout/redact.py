"""What canarykit shows or records of a release never carries a secret.

A release folder holds text from many hands (notebooks, release.json, plan.yaml, the audit
and notification logs): a URL's user:password@, a pasted kubeconfig line or a token in an
error message must not travel on into a report, a notebook output or a recorded result.
`strip_userinfo` is applied to everything read back from a release folder and to every result
a runbook records; `for_display` also withholds whole lines that look like credentials
(`canarykit.core.names.looks_like_credential`), for what the report shows.
"""

from __future__ import annotations

import re
from typing import Any

from canarykit.core.names import looks_like_credential

# scheme://userinfo@ : the userinfo runs to the last "@" before the authority ends, as a URL
# parser reads it (so "user:p@ss@host" loses all of "user:p@ss@").
_USERINFO = re.compile(r"(?<![A-Za-z0-9+.-])([A-Za-z][A-Za-z0-9+.-]*://)[^\s/?#\\\"'<>]*@")
_PEM_BLOCK = re.compile(r"-----BEGIN [A-Z0-9 ]+-----.*?(?:-----END [A-Z0-9 ]+-----|\Z)", re.S)
WITHHELD = "(withheld: looked like a credential)"
SHOWN = 80  # characters of a value an error message may show


def strip_userinfo(text: str) -> str:
    """`text` with the user (and password) part of every URL in it removed."""
    return _USERINFO.sub(r"\1", text) if "://" in text else text


def strip_userinfo_deep(value: Any) -> Any:
    """JSON-like data with `strip_userinfo` applied to every string in it (keys too)."""
    if isinstance(value, str):
        return strip_userinfo(value)
    if isinstance(value, dict):
        return {strip_userinfo_deep(k): strip_userinfo_deep(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [strip_userinfo_deep(item) for item in value]
    return value


def for_display(text: str) -> str:
    """`text` as the report may show it: URL userinfo removed, key blocks and every line that
    looks like a credential withheld."""
    text = strip_userinfo(text)
    if "-----BEGIN " in text:
        text = _PEM_BLOCK.sub(WITHHELD, text)
    if not looks_like_credential(text):
        return text
    return "\n".join(WITHHELD if looks_like_credential(line) else line
                     for line in text.split("\n"))


def for_display_deep(value: Any) -> Any:
    """JSON-like data with `for_display` applied to every string in it."""
    if isinstance(value, str):
        return for_display(value)
    if isinstance(value, dict):
        return {k: for_display_deep(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [for_display_deep(item) for item in value]
    return value


def shown(value: Any) -> Any:
    """A value short and clean enough for an error message: never unbounded, never a
    secret (BadInput shows the value it is given)."""
    if value is None or isinstance(value, bool | int | float):
        return value
    text = for_display(value if isinstance(value, str) else repr(value))
    return text if len(text) <= SHOWN else text[:SHOWN] + "…"
