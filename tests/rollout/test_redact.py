"""canarykit.rollout.redact: what is shown or recorded of a release carries no secret."""

from __future__ import annotations

import pytest

from canarykit.rollout import redact


@pytest.mark.parametrize(("text", "expected"), [
    ("http://user:pass@prometheus:9090/api", "http://prometheus:9090/api"),
    ("see https://TOKEN@github.com/x and ftp://a@b", "see https://github.com/x and ftp://b"),
    ("url: 'http://u:p@ss@host'", "url: 'http://host'"),  # to the last @ of the authority
    ('{"url": "http://u:pw@h"}', '{"url": "http://h"}'),
    ("http://host/path?mail=a@b#x@y", "http://host/path?mail=a@b#x@y"),  # not userinfo
    ("git@github.com:org/repo", "git@github.com:org/repo"),  # no scheme, no URL
])
def test_strip_userinfo_removes_the_user_and_password_of_every_url(text, expected):
    assert redact.strip_userinfo(text) == expected


def test_strip_userinfo_deep_cleans_every_string_of_json_like_data():
    data = {"reason": "http://a:secret1@h", "phases": [{"note": ["x http://b:secret2@h"]}],
            "http://c:secret3@h": 1, "count": 3}
    cleaned = redact.strip_userinfo_deep(data)
    assert "secret" not in repr(cleaned)
    assert cleaned["count"] == 3 and cleaned["phases"][0]["note"] == ["x http://h"]


def test_for_display_withholds_credential_lines_and_key_blocks_but_keeps_the_rest():
    text = ("service: reviews\n"
            "  token: abc123\n"
            "Authorization: Bearer abcdefghijklmnopqrstuvwxyz\n"
            "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n"
            "-----END PRIVATE KEY-----\n"
            "url: http://admin:hunter2@prometheus\n"
            "weight: 25")
    shown = redact.for_display(text)
    for secret in ("abc123", "abcdefghijklmnopqrstuvwxyz", "MIIEvQIBADANBgkqhkiG9w0BAQEFAASC",
                   "hunter2"):
        assert secret not in shown
    assert shown.count(redact.WITHHELD) == 3
    assert "service: reviews" in shown and "url: http://prometheus" in shown
    assert shown.endswith("weight: 25")


def test_for_display_leaves_ordinary_text_alone():
    text = "canary success rate 80.3% < minimum 99%\nskyline-frontend v2"
    assert redact.for_display(text) == text


def test_shown_values_are_short_and_clean():
    assert redact.shown("x" * 10_000_000) == "x" * redact.SHOWN + "…"
    assert redact.shown("http://u:topsecret@h") == "http://h"
    assert "topsecret" not in redact.shown({"url": "http://u:topsecret@h"})
    assert redact.shown(3) == 3 and redact.shown(None) is None
