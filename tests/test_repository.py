"""The repository itself: what a fresh clone holds is what the tests and the package read."""

from __future__ import annotations

import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=REPO, check=True, capture_output=True,
                          text=True).stdout


def test_no_tracked_file_is_ignored():
    # A tracked file that .gitignore also matches is one `git add -A` away from vanishing
    # from a fresh clone (examples/ read by the tests once were).
    assert git("ls-files", "--cached", "--ignored", "--exclude-standard") == ""


def test_the_examples_and_runbooks_the_tests_read_are_tracked():
    tracked = set(git("ls-files", "examples", "canarykit/runbooks").split())
    assert {"examples/reviews.yaml", "examples/plans/reviews-canary.yaml",
            "canarykit/runbooks/analyze.ipynb"} <= tracked
