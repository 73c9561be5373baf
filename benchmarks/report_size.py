"""Report size: bytes of the HTML report of a synthetic release (target <= 2.5 MB).

Builds the test suite's release folder (8 notebooks: preflight, internal canary, a shift that
died and its retry, analysis at 5%, 25%, analysis at 25% failing, rollback; ~10 minutes of
metrics at 10 s for v1 and v2) in a temporary folder, builds its report and prints the size of
the report and of its parts. Exits 1 when the report is over the target.

Usage: python benchmarks/report_size.py [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from canarykit.rollout import report  # noqa: E402
from tests.release_fixture import RELEASE, SERVICE, write_release  # noqa: E402

TARGET_BYTES = 2_500_000


def measure() -> dict[str, int]:
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_release(Path(tmp) / SERVICE / RELEASE)
        page = report.build_report(folder).read_text(encoding="utf-8")
    figures = sum(len(m) for m in re.findall(r'<script type="application/json"[^>]*>.*?</script>',
                                             page, re.S))
    packed = len(report.packed_plotly())
    return {
        "report_bytes": len(page.encode("utf-8")),
        "plotly_min_js_bytes": report.PLOTLY_JS.stat().st_size,
        "plotly_embedded_bytes": packed,
        "figure_json_bytes": figures,
        "rest_bytes": len(page.encode("utf-8")) - packed - figures,
        "phases": len(re.findall(r'<tr class="phase"', page)),
        "charts": len(re.findall(r'class="chart ck-chart"', page)),
        "target_bytes": TARGET_BYTES,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    sizes = measure()
    for name, value in sizes.items():
        print(f"{name:24} {value:>12,}")
    verdict = "within" if sizes["report_bytes"] <= TARGET_BYTES else "OVER"
    print(f"report: {sizes['report_bytes']:,} bytes, {verdict} the {TARGET_BYTES:,}-byte target")
    if args.json:
        args.json.write_text(json.dumps(sizes, indent=2) + "\n")
    return 0 if sizes["report_bytes"] <= TARGET_BYTES else 1


if __name__ == "__main__":
    sys.exit(main())
