"""Fixtures that start real processes: the local Kubernetes API server and Prometheus."""

from tests.apiserver_fixture import apiserver  # noqa: F401
from tests.prometheus_fixture import *  # noqa: F401,F403
