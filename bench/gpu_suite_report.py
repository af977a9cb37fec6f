"""Gather the steps of ``bench/gpu_suite.sh`` into one JSON: per step its status, seconds, the load
average before and after, and its figures (every JSON line it printed, so a step cut short by its
time limit keeps what it printed before).

    python bench/gpu_suite_report.py WORK_DIR OUT_JSON SMOKE(0|1)

Prints one line of step statuses; exit status 0 when every step passed, else 1.
"""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path
from xml.etree import ElementTree

import torch

#: Exit status of ``timeout`` when it stopped the step.
TIMED_OUT = 124


def json_lines(text: str) -> list:
    """Every line of ``text`` that is one JSON object, in order."""
    found = []
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                found.append(json.loads(line))
            except ValueError:
                continue  # a line cut short by the time limit
    return found


def step_entry(work: Path, name: str) -> dict:
    """One step's entry, from its ``.status``, ``.log`` and optional ``.json`` files."""
    code, seconds, *load = (work / f"{name}.status").read_text().split()
    code = int(code)
    log = (work / f"{name}.log").read_text(errors="replace")
    entry = {"status": "passed" if code == 0 else "timeout" if code == TIMED_OUT else "failed",
             "exit_code": code, "seconds": int(seconds),
             "load_average_before": [float(v) for v in load[:3]],
             "load_average_after": [float(v) for v in load[3:6]]}
    lines = json_lines(log)
    if lines:
        entry["lines"] = lines
    if (work / f"{name}.json").exists():
        entry["figures"] = json.loads((work / f"{name}.json").read_text())
    elif name == "pytest_gpu" and (work / "pytest_gpu.xml").exists():
        node = ElementTree.parse(work / "pytest_gpu.xml").getroot()
        node = node if node.tag == "testsuite" else node[0]
        entry["figures"] = {key: int(node.get(key, 0))
                            for key in ("tests", "failures", "errors", "skipped")}
    elif lines:
        entry["figures"] = lines[-1]
    if code != 0:
        entry["log_tail"] = log[-2000:]
    return entry


def main() -> int:
    work, out, smoke = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] == "1"
    suite = {"suite": "gpu_suite", "cpu_smoke": smoke, "python": platform.python_version(),
             "torch": torch.__version__, "cuda": torch.version.cuda,
             "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
             "steps": {}}
    for status_file in sorted(work.glob("*.status")):
        try:
            suite["steps"][status_file.stem] = step_entry(work, status_file.stem)
        except (ValueError, OSError) as error:
            suite["steps"][status_file.stem] = {"status": "failed", "figures_error": str(error)}
    suite["passed"] = bool(suite["steps"]) and all(
        step["status"] == "passed" for step in suite["steps"].values())
    out.write_text(json.dumps(suite, indent=2) + "\n")
    sys.stdout.write(json.dumps({name: step["status"] for name, step in suite["steps"].items()})
                     + "\n")
    sys.stdout.write(f"figures written to {out}\n")
    return 0 if suite["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
