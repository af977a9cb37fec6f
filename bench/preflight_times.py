"""Time to refusal of every bad setting of ``labeler run`` (the table in tests/preflight_cases.py).

Each case runs the real command line (``python -m labeler run ...``) in a fresh process, so the
time includes Python start-up and imports. Prints a Markdown table.

    python bench/preflight_times.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.preflight_cases import CASES, run_case  # after the path is set


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs per case (the median is shown)")
    args = parser.parse_args()
    print("| case | exit | seconds (median) | message |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as work:
        for case in CASES:
            times, refusal = [], None
            for attempt in range(args.repeat):
                refusal = run_case(case, Path(work) / f"{case.name}-{attempt}")
                times.append(refusal.seconds)
            message = refusal.stderr.strip().splitlines()[-1] if refusal.stderr.strip() else ""
            print(f"| {case.name} | {refusal.returncode} | {statistics.median(times):.2f} | "
                  f"`{message.replace('|', '/')}` |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
