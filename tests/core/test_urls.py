"""A URL is shown and recorded without the credentials it may carry."""

import pytest

from canarykit.core.urls import scrub, without_userinfo


@pytest.mark.parametrize("url, shown", [
    ("http://user:pass@127.0.0.1:6443", "http://127.0.0.1:6443"),
    ("https://admin:s3cr%40t@kube.example.com/api?x=1#f", "https://kube.example.com/api?x=1#f"),
    ("https://token@[::1]:8443/", "https://[::1]:8443/"),
    ("https://a:b@c@host.example", "https://host.example"),  # the last @ ends the userinfo
])
def test_userinfo_is_removed_and_the_rest_kept(url, shown):
    assert without_userinfo(url) == shown


@pytest.mark.parametrize("url", ["https://kube.example.com:6443", "http://127.0.0.1/a@b",
                                 "unix:///var/run/socket", ""])
def test_a_url_without_userinfo_is_unchanged(url):
    assert without_userinfo(url) == url


def test_an_unparseable_url_is_still_scrubbed():
    assert without_userinfo("http://user:pw@[::1") == "http://[::1"


def test_scrub_removes_the_userinfo_of_every_url_in_a_message():
    message = ("cannot reach http://bob:hunter2@10.0.0.1:6443/apis (proxy "
               "https://p:q@proxy.example:3128)")
    assert scrub(message) == ("cannot reach http://10.0.0.1:6443/apis (proxy "
                              "https://proxy.example:3128)")
    assert "hunter2" not in scrub(message)
