"""An analysis of subsets named stable/canary reads the versions their pods report (v1/v2),
against the real Prometheus of tests/prometheus_fixture.py and the local API server."""

from __future__ import annotations

import argparse
import json

import pytest
import yaml

from canarykit.analysis import metrics as m
from canarykit.analysis import step as analysis
from canarykit.analysis.judges import Verdict
from canarykit.analysis.settings import AnalysisSettings
from canarykit.core.errors import ExitCode
from canarykit.rollout import target as rollout_target
from tests.apiserver_fixture import seed
from tests.prometheus_fixture import END

DR = yaml.safe_load("""
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: healthy, namespace: shop}
spec:
  host: healthy.shop.svc.cluster.local
  subsets:
  - name: stable
    labels: {app: healthy, version: v1}
  - name: canary
    labels: {app: healthy, version: v2}
""")
JUDGES = ["success-rate", "latency"]


def cli(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="canarykit analyze")
    analysis.add_arguments(parser)
    return parser.parse_args(list(argv))


@pytest.fixture
def kubeconfig(apiserver) -> str:
    seed(apiserver, DR)
    return str(apiserver.kubeconfig)


def test_the_subset_names_as_versions_find_nothing(prometheus_url):
    """What preflight and analyze asked before: destination_version="stable"."""
    selector = m.MetricsSelector("healthy", "shop", stable="stable", canary="canary")
    decision = analysis.run_analysis(m.PrometheusSettings(prometheus_url), selector,
                                     AnalysisSettings(judges=JUDGES), end=END)
    assert decision.verdict == Verdict.INCONCLUSIVE
    assert "no series for the canary version canary" in decision.reason


def test_a_runbook_target_analyses_the_versions_of_its_subsets(prometheus_url, kubeconfig):
    target = rollout_target.connect_target(
        service="healthy.shop.svc.cluster.local", stable="stable", canary="canary",
        kubeconfig=kubeconfig, prometheus_url=prometheus_url)
    selector = rollout_target.metrics_selector(target, rollout_target.subset_versions(target))
    decision = analysis.run_analysis(target.prometheus, selector,
                                     AnalysisSettings(judges=JUDGES), end=END)
    assert decision.verdict == Verdict.PASS, decision.reason
    rate = next(j for j in decision.judgements if j.judge == "success-rate")
    assert rate.values["requests"] > 1000
    assert all('destination_service_name="healthy"' in q for q in rate.queries)


def test_analyze_cli_names_subsets_and_an_fqdn(prometheus_url, kubeconfig, capsys):
    code = analysis.run(cli("healthy.shop.svc.cluster.local", "--stable-subset", "stable",
                            "--canary-subset", "canary", "--kubeconfig", kubeconfig,
                            "--prometheus", prometheus_url, "--at", str(END),
                            "--judges", ",".join(JUDGES)))
    out = capsys.readouterr().out
    assert code == ExitCode.OK, out
    assert "canary subset `canary` (version v2) vs stable subset `stable` (version v1)" in out


def test_analyze_cli_refuses_a_version_and_a_subset_for_one_role(prometheus_url, kubeconfig,
                                                                  capsys):
    code = analysis.run(cli("healthy", "-n", "shop", "--stable-subset", "stable",
                            "--canary-subset", "canary", "--stable", "v1",
                            "--kubeconfig", kubeconfig, "--prometheus", prometheus_url))
    assert code == ExitCode.BAD_INPUT
    assert "--stable-subset" in capsys.readouterr().err


def test_analyze_cli_names_the_version_label_key(prometheus_url, apiserver, capsys):
    dr = json.loads(json.dumps(DR))
    for subset, version in zip(dr["spec"]["subsets"], ("v1", "v2"), strict=True):
        subset["labels"] = {"app": "healthy", "version": "x" + version,
                            "app.kubernetes.io/version": version}
    seed(apiserver, dr)
    args = ("healthy", "-n", "shop", "--stable-subset", "stable", "--canary-subset", "canary",
            "--kubeconfig", str(apiserver.kubeconfig), "--prometheus", prometheus_url,
            "--at", str(END), "--judges", ",".join(JUDGES), "--output", "json")
    assert analysis.run(cli(*args)) == ExitCode.OK  # by precedence: app.kubernetes.io/version
    capsys.readouterr()
    assert analysis.run(cli(*args, "--version-label-key", "version")) == ExitCode.INCONCLUSIVE
    assert "version xv2" in json.loads(capsys.readouterr().out)["reason"]
