"""URLs as canarykit shows and records them: never with the `user:password@` a URL may carry.

A kubeconfig's server, a Prometheus or webhook URL may be written `https://user:pass@host`;
whatever canarykit prints, records (the audit log) or reports goes through here first, so a
credential in a URL never reaches a terminal, a log or a report.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit, urlunsplit

# scheme://userinfo@ anywhere in a text; userinfo stops at what ends an authority.
_USERINFO_IN_TEXT = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)[^\s/?#@]*@")


def without_userinfo(url: Any) -> str:
    """`url` without its `user:password@` part, otherwise unchanged (`str(url)` if it has none).

    A value that does not parse as a URL is scrubbed as text, so nothing that looks like
    userinfo survives either way.
    """
    text = str(url)
    try:
        parts = urlsplit(text)
    except ValueError:  # e.g. an unbalanced IPv6 bracket
        return scrub(text)
    if "@" not in parts.netloc:
        return scrub(text)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=host))


def scrub(text: str) -> str:
    """`text` (an error message, a log line) with the userinfo of every URL in it removed."""
    return _USERINFO_IN_TEXT.sub(r"\1", text)
