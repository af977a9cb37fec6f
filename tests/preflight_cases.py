"""The bad-settings table of ``labeler run``: each case must be refused at once, nothing written.

Shared by ``tests/test_settings_preflight.py`` (which asserts it) and
``bench/preflight_times.py`` (which times it).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Case:
    """One user mistake.

    Attributes:
        name: short id.
        job: the job file's text, or None (flags only); ``{input}``/``{output}`` are filled in.
        flags: ``labeler run`` flags after the job file.
        expected: a substring of the one-line message.
        output_exists: ``file`` (the output is a file), ``run`` (a previous run's folder), or
            None (absent).
    """

    name: str
    job: str | None
    flags: tuple[str, ...]
    expected: str
    output_exists: str | None = None


BASE = 'input = "{input}"\noutput = "{output}"\nmodel = "tiny"\n'

CASES = (
    Case("kl_threshold_string", BASE + '[diffseg]\nkl_threshold = "high"\n', (),
         "[diffseg] kl_threshold: must be a number (got 'high')"),
    Case("kl_threshold_negative", BASE + "[diffseg]\nkl_threshold = -1\n", (),
         "[diffseg] kl_threshold: must be > 0 (got -1)"),
    Case("kl_threshold_negative_on_previous_run", BASE + "[diffseg]\nkl_threshold = -1\n", (),
         "[diffseg] kl_threshold: must be > 0 (got -1)", output_exists="run"),
    Case("missing_embedding_set", None,
         ("--method", "slime", "--embeddings", "{tmp}/missing.safetensors", "--input", "{input}",
          "--output", "{output}"), "embedding set {tmp}/missing.safetensors does not exist"),
    Case("unknown_model", None,
         ("--model", "no-such-org/no-such-model", "--input", "{input}", "--output", "{output}"),
         "model 'no-such-org/no-such-model' is neither"),
    Case("cuda_on_cpu", None,
         ("--device", "cuda", "--model", "tiny", "--input", "{input}", "--output", "{output}"),
         "--device cuda: CUDA is not available"),
    Case("batch_size_string", BASE + 'batch_size = "two"\n', (),
         "batch_size: must be an integer (got 'two')"),
    Case("output_is_a_file", None, ("--model", "tiny", "--input", "{input}", "--output", "{output}"),
         "is a file", output_exists="file"),
    Case("slime_table_in_diffseg_job", BASE + "[slime]\ntimestep = 50\n", (),
         "[slime] table given, but this job's method is diffseg"),
    Case("unknown_key", BASE + "colour = 1\n", (), "unknown job settings: colour"),
    Case("unknown_method_key", BASE + "[diffseg]\ntau = 1\n", (), "unknown [diffseg] settings: tau"),
    Case("embeddings_for_diffseg", None,
         ("--embeddings", "x.safetensors", "--model", "tiny", "--input", "{input}", "--output",
          "{output}"), "--embeddings is a setting of --method slime, not of diffseg"),
)


@dataclass
class Refusal:
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    output_before: dict | None
    output_after: dict | None
    expected: str


def make_input(folder: Path) -> Path:
    """Two small images (left half dark, right half bright)."""
    folder.mkdir(parents=True, exist_ok=True)
    for index, (height, width) in enumerate([(24, 32), (40, 20)]):
        image = np.zeros((height, width, 3), np.uint8)
        image[:, width // 2:] = 230 - 20 * index
        Image.fromarray(image).save(folder / f"img{index}.png")
    return folder


def snapshot(path: Path) -> dict | None:
    """Every file under ``path`` with its bytes (None when ``path`` does not exist)."""
    if not path.exists():
        return None
    if path.is_file():
        return {".": path.read_bytes()}
    return {str(p.relative_to(path)): p.read_bytes() if p.is_file() else None
            for p in sorted(path.rglob("*"))}


def labeler_run(args: list[str], cwd: Path, env: dict | None = None,
                timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m labeler run ARGS`` in a subprocess that imports this checkout."""
    environment = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([sys.executable, "-m", "labeler", "run", *args], cwd=cwd, env=environment,
                          capture_output=True, text=True, timeout=timeout, check=False)


def run_case(case: Case, tmp: Path) -> Refusal:
    """Prepare the case's files under ``tmp`` and run it through the real command line."""
    tmp.mkdir(parents=True, exist_ok=True)
    fill = {"input": str(make_input(tmp / "input")), "output": str(tmp / "out"), "tmp": str(tmp)}
    output = tmp / "out"
    if case.output_exists == "file":
        output.write_text("not a folder\n")
    elif case.output_exists == "run":
        (output / "run").mkdir(parents=True)
        (output / "run" / "config.json").write_text('{"fingerprint": "0123456789abcdef"}\n')
    args = []
    if case.job is not None:
        job = tmp / "job.toml"
        job.write_text(case.job.format(**fill))
        args.append(str(job))
    args += [flag.format(**fill) for flag in case.flags]
    before = snapshot(output)
    started = time.perf_counter()
    result = labeler_run(args, cwd=tmp)
    seconds = time.perf_counter() - started
    return Refusal(result.returncode, result.stdout, result.stderr, seconds, before,
                   snapshot(output), case.expected.format(**fill))
