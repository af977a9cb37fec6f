"""``labeler report``: the statistics of an output, and the page as headless Chromium draws it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile

import numpy as np
import pytest
from PIL import Image

from labeler.report.stats import SCORE_BIN
from labeler.report.svg import BAR_COLOUR
from tests._output_fixture import write_review_output
from tests.consumers import cli
from tests.test_preview import CHROMIUM, CHROMIUM_FLAGS


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    write_review_output(str(root))
    return root / "out"


def test_report_counts_what_the_output_holds(finished, tmp_path):
    code, text = cli("report", str(finished), "--out", str(tmp_path))
    assert code == 0, text
    assert "4 images (3 labeled, 1 failed), 3 annotations" in text
    stats = json.loads((tmp_path / "report.json").read_text())
    assert (stats["images"], stats["labeled"], stats["failed"], stats["annotations"]) == (
        4, 3, 1, 3)
    assert stats["segments_per_image"] == {"0": 1, "1": 1, "2": 1}
    assert stats["per_class"] == {"dog": 2, "cat": 1}
    assert stats["failures"] == {"decode_error": 1}
    bins = {i: n for i, n in enumerate(stats["scores"]) if n}
    assert bins == {int(0.42 / SCORE_BIN): 1, int(0.7 / SCORE_BIN): 1, int(0.91 / SCORE_BIN): 1}
    # mask shares 309/768 (10^-0.40) and 48/768 (10^-1.20) of a.png, 84/320 (10^-0.58) of
    # b.png: bins of half a decade from 10^-6
    areas = {i: n for i, n in enumerate(stats["areas"]) if n}
    assert areas == {11: 1, 9: 1, 10: 1}


def test_report_defaults_to_output_report_and_refuses_a_non_output(finished, tmp_path, capsys):
    assert cli("report", str(finished))[0] == 0
    assert (finished / "report" / "index.html").is_file()
    assert cli("report", str(tmp_path / "nothing"))[0] == 2
    assert "images.parquet" in capsys.readouterr().err


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="needs /usr/bin/chromium "
                    "(scripts/install_system_deps.sh)")
def test_report_renders_its_plots_in_headless_chromium(finished, tmp_path):
    assert cli("report", str(finished), "--out", str(tmp_path))[0] == 0
    url = (tmp_path / "index.html").as_uri()
    with tempfile.TemporaryDirectory() as profile:
        base = [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--window-size=800,2200"]
        dom = subprocess.run(base + ["--dump-dom", url], capture_output=True, text=True,
                             timeout=120, check=False).stdout
        subprocess.run(base + [f"--screenshot={tmp_path / 'shot.png'}", url],
                       capture_output=True, timeout=120, check=False)
    charts = {m.group(1): [int(v) for v in re.findall(r'data-value="(\d+)"', m.group(0))]
              for m in re.finditer(r'<svg id="([a-z-]+)" class="plot".*?</svg>', dom, re.DOTALL)}
    assert charts["segments-per-image"] == [1, 1, 1]
    assert charts["per-class"] == [2, 1] and charts["failures"] == [1]
    assert sum(charts["scores"]) == 3 and sum(charts["areas"]) == 3
    # the bars are drawn: the screenshot holds their colour over a sizeable area
    pixels = np.asarray(Image.open(tmp_path / "shot.png").convert("RGB")).astype(int)
    colour = np.array([int(BAR_COLOUR[i:i + 2], 16) for i in (1, 3, 5)])
    assert (np.abs(pixels - colour).max(axis=-1) <= 8).sum() > 20000
