"""Fixtures that start real processes: the local Kubernetes API server, Prometheus, Chromium."""

from tests.apiserver_fixture import apiserver  # noqa: F401
from tests.chromium_fixture import chromium  # noqa: F401
from tests.prometheus_fixture import *  # noqa: F401,F403
