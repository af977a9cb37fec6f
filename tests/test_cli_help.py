"""`labeler run --help` teaches: description, every flag's default, the method settings."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest
import tomllib

from labeler.cli import main
from labeler.config import build_config
from labeler.methods.diffseg.settings import DiffSegOptions

README = Path(__file__).resolve().parents[1] / "README.md"


def test_run_help_lists_defaults_and_method_settings():
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        main(["run", "--help"])
    text = " ".join(out.getvalue().split())
    assert "Label a collection" in text and "resumes" in text
    options = text[text.index("options:") :]
    for option in ["--method", "--model", "--address", "--workers", "--gpus-per-worker",
                   "--batch-size", "--shard-size", "--seed", "--device", "--dtype", "--max-pixels",
                   "--overwrite", "--no-progress"]:
        entry = next(part for part in options.split(" --") if part.startswith(option[2:] + " "))
        assert "(default: " in entry, option
    assert "(default: 4)" in text and "(default: 256)" in text
    for name, setting in DiffSegOptions.model_fields.items():
        assert f"{name} = {setting.default!r}" in text


def test_readme_lower_threshold_example_sets_one():
    readme = README.read_text()
    section = readme[readme.index("at a lower merge threshold"):]
    snippet = re.search(r"printf '(.*?)' > photos.toml", section).group(1).replace("\\n", "\n")
    config = build_config(tomllib.loads(snippet), {"input": "in", "output": "out"})
    assert config.settings.kl_threshold < DiffSegOptions().kl_threshold
