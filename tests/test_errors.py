"""One error family: user mistakes are UserError (one line, exit 2); anything else is a bug."""

from __future__ import annotations

import subprocess
import sys

import pytest

from labeler import cli
from labeler.errors import NotFoundError, StorageFaultError, UserError
from labeler.eval.loading import EvalInputError
from labeler.io.decode import ImageDecodeError
from labeler.io.uris import InputError
from labeler.methods.diffews.model import NotADiffewsModel
from labeler.methods.slime.embedding_set import IncompatibleModelError
from labeler.models.locate import ModelLoadError
from labeler.output.reader import OutputReadError
from labeler.runtime.lease import LeaseHeldError, LeaseLostError
from labeler.runtime.run_folder import ConfigMismatchError
from labeler.runtime.scheduler import WorkersCannotStartError


@pytest.mark.parametrize("error", [
    NotFoundError, StorageFaultError, EvalInputError, ImageDecodeError, InputError, NotADiffewsModel,
    IncompatibleModelError, ModelLoadError, OutputReadError, LeaseHeldError, LeaseLostError,
    ConfigMismatchError, WorkersCannotStartError])
def test_every_user_mistake_class_is_a_user_error(error):
    assert issubclass(error, UserError)


def test_a_missing_path_is_a_user_error_and_still_a_file_not_found_error():
    assert issubclass(NotFoundError, FileNotFoundError)


@pytest.mark.parametrize("bug", [RuntimeError("a bug"), ValueError("a bug"), OSError("a bug")])
def test_a_bug_in_a_command_is_not_reported_as_a_user_mistake(monkeypatch, tmp_path, bug):
    def broken(output: str, **options) -> str:
        raise bug

    monkeypatch.setattr(cli, "describe_run", broken)
    with pytest.raises(type(bug), match="a bug"):
        cli.main(["status", str(tmp_path)])


def test_a_user_mistake_is_one_line_and_exit_2(monkeypatch, tmp_path, capsys):
    def refused(output: str, **options) -> str:
        raise UserError("no such run")

    monkeypatch.setattr(cli, "describe_run", refused)
    assert cli.main(["status", str(tmp_path)]) == 2
    assert capsys.readouterr().err == "labeler: error: no such run\n"


def test_the_command_line_shows_a_bug_with_its_traceback_and_exit_1(tmp_path):
    # `labeler status` on a folder that is no run is a user mistake (exit 2); the same command
    # with describe_run broken is a bug: Python's traceback and exit status 1.
    script = ("import sys, labeler.cli as cli\n"
              "def broken(output, **options):\n    raise RuntimeError('injected bug')\n"
              "cli.describe_run = broken\n"
              f"sys.exit(cli.main(['status', {str(tmp_path)!r}]))\n")
    done = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "Traceback" in done.stderr and "RuntimeError: injected bug" in done.stderr
    done = subprocess.run([sys.executable, "-m", "labeler", "status", str(tmp_path)],
                          check=False, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
