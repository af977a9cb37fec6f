"""Tests of ``labeler preview``: overlay pixels, gallery structure, and a real headless Chromium render."""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
from html.parser import HTMLParser
from pathlib import Path

import fsspec
import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, os.path.dirname(__file__))
from _output_fixture import FixtureImage, write_output

from labeler.preview import command as preview_command
from labeler.preview.overlay import (
    PALETTE,
    category_colors,
    mask_boundary,
    render_overlay,
)

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="labeler")
    sub = parser.add_subparsers(dest="command", required=True)
    preview_command.add_parser(sub)
    args = parser.parse_args(argv)
    return args.func(args)


# ---------------------------------------------------------------------------------------------
# overlay drawing


def test_overlay_colors_mask_pixels_and_draws_boundary_and_legend():
    image = Image.new("RGB", (40, 30), (100, 100, 100))
    mask = np.zeros((30, 40), bool)
    mask[5:20, 5:25] = True
    color = (228, 26, 28)
    out = render_overlay(
        image, [(mask, color)], [("car (1)", color)], alpha=0.5, max_size=None, thickness=1
    )
    px = np.asarray(out)
    assert px.shape[1] >= 40 and px.shape[0] > 30  # legend strip appended below
    # interior: (1 - a) * image + a * color = (164, 63, 64)
    assert tuple(px[10, 10]) == (164, 63, 64)
    # boundary row/column: the solid color
    assert tuple(px[5, 10]) == color and tuple(px[10, 24]) == color
    # outside the mask: untouched
    assert tuple(px[25, 30]) == (100, 100, 100) and tuple(px[2, 2]) == (100, 100, 100)
    changed = np.any(px[:30, :40] != 100, axis=-1)
    np.testing.assert_array_equal(changed, mask)
    # the legend strip contains the swatch color
    legend = px[30:]
    assert np.all(legend.reshape(-1, 3) == color, axis=1).sum() > 20


def test_overlay_scales_masks_with_the_image():
    image = Image.new("RGB", (400, 200), (0, 0, 0))
    mask = np.zeros((200, 400), bool)
    mask[:, 200:] = True
    out = np.asarray(render_overlay(image, [(mask, (0, 200, 0))], alpha=1.0, max_size=100))
    assert out.shape == (50, 100, 3)
    assert tuple(out[25, 75]) == (0, 200, 0) and tuple(out[25, 20]) == (0, 0, 0)


def test_mask_boundary_hand_case():
    m = np.zeros((5, 5), bool)
    m[1:4, 1:4] = True
    b = mask_boundary(m, 1)
    expected = m.copy()
    expected[2, 2] = False  # the only pixel whose four neighbours are all inside
    np.testing.assert_array_equal(b, expected)


def test_category_colors_are_fixed_by_id_rank():
    assert category_colors([7, 3, 12]) == {3: PALETTE[0], 7: PALETTE[1], 12: PALETTE[2]}


# ---------------------------------------------------------------------------------------------
# fixture output: 3 labeled images (black sources, large masks), 2 failed (one readable)

CATS = [{"id": 1, "name": "car"}, {"id": 2, "name": "<b>sign</b> & co"}]
REASON_OOM = "model error: CUDA out of memory <tried 2 GiB>"
REASON_MISSING = "source not found: FileNotFoundError"


def _box(h, w, y0, y1, x0, x1):
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def build_fixture(root: str) -> str:
    h, w = 96, 128
    black = np.zeros((h, w, 3), np.uint8)
    images = [
        FixtureImage("street_1", black, [(1, _box(h, w, 0, 96, 0, 80), 0.9)]),
        FixtureImage(
            "street_2",
            black,
            [(1, _box(h, w, 0, 96, 0, 60), 0.9), (2, _box(h, w, 10, 40, 70, 120), 0.8)],
        ),
        FixtureImage(
            "street_3",
            black,
            [
                (1, _box(h, w, 0, 50, 0, 128), 0.9),
                (1, _box(h, w, 50, 96, 0, 50), 0.7),
                (2, _box(h, w, 60, 90, 60, 100), 0.6),
            ],
        ),
        FixtureImage("broken_1", np.full((h, w, 3), 200, np.uint8), failed=REASON_OOM),
        FixtureImage("broken_2", np.full((h, w, 3), 50, np.uint8), failed=REASON_MISSING),
    ]
    write_output(root, images, CATS)
    fs, path = fsspec.core.url_to_fs(root.rstrip("/") + "/src/broken_2.png")
    fs.rm(path)  # this failure's source is gone: the card shows a placeholder
    return root.rstrip("/") + "/out"


class _Cards(HTMLParser):
    """Collects the gallery's cards, thumbnails and texts by class name."""

    def __init__(self) -> None:
        super().__init__()
        self.cards: list[dict] = []
        self.stack: list[str] = []
        self.text_of: dict[str, list[str]] = {}
        self.current: str | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        classes = (a.get("class") or "").split()
        if tag == "figure" and "card" in classes:
            self.cards.append(
                {
                    "status": a.get("data-status"),
                    "annotations": a.get("data-annotations"),
                    "imgs": [],
                    "text": "",
                }
            )
        if tag == "img" and self.cards:
            self.cards[-1]["imgs"].append(a)
        if tag == "a" and self.cards:
            self.cards[-1].setdefault("links", []).append(a.get("href"))

    def handle_data(self, data):
        if self.cards:
            self.cards[-1]["text"] += data


def parse_cards(page: str) -> list[dict]:
    p = _Cards()
    p.feed(page)
    return p.cards


def test_gallery_structure_counts_and_escaping(tmp_path, capsys):
    out = build_fixture(str(tmp_path))
    assert run_cli(["preview", out]) == 0
    assert "3 overlays" in capsys.readouterr().out
    index = tmp_path / "out" / "preview" / "index.html"
    page = index.read_text()
    cards = parse_cards(page)
    labeled = [c for c in cards if c["status"] == "labeled"]
    failed = [c for c in cards if c["status"] == "failed"]
    assert [c["annotations"] for c in labeled] == ["1", "2", "3"]
    assert "3 annotations" in labeled[2]["text"] and "1 annotation" in labeled[0]["text"]
    assert "car ×2" in labeled[2]["text"] and "<b>sign</b> & co ×1" in labeled[2]["text"]
    assert len(failed) == 2
    assert REASON_OOM in failed[0]["text"] and REASON_MISSING in failed[1]["text"]
    assert len(failed[0]["imgs"]) == 1 and failed[1]["imgs"] == []  # unreadable source: placeholder
    # escaping: category name and reason never appear as raw markup
    assert "<b>sign</b>" not in page and "&lt;b&gt;sign&lt;/b&gt; &amp; co" in page
    assert "<tried 2 GiB>" not in page and "&lt;tried 2 GiB&gt;" in page
    # links are relative and point at files that exist
    for card in cards:
        for img in card["imgs"]:
            src = img["src"]
            assert not src.startswith(("/", "file:", "http")) and (index.parent / src).is_file()
    assert (
        'id="n-images">5<' in page
        and 'id="n-failed">2<' in page
        and 'id="n-annotations">6<' in page
    )
    # overlays show the category color where the masks are (black source: blend = alpha * color)
    first = np.asarray(
        Image.open(index.parent / labeled[0]["imgs"][0]["src"]).convert("RGB")
    ).astype(int)
    blend = np.array([round(0.45 * c) for c in PALETTE[0]])
    assert np.abs(first[48, 40] - blend).max() <= 12  # inside the mask (JPEG tolerance)
    assert first[48, 110].max() <= 12  # outside: still black


def test_preview_n_and_only_failed(tmp_path):
    out = build_fixture(str(tmp_path))
    assert run_cli(["preview", out, "--n", "2", "--out", str(tmp_path / "p2")]) == 0
    cards = parse_cards((tmp_path / "p2" / "index.html").read_text())
    assert sum(c["status"] == "labeled" for c in cards) == 2
    assert sum(c["status"] == "failed" for c in cards) == 2
    assert run_cli(["preview", out, "--only-failed", "--out", str(tmp_path / "pf")]) == 0
    page = (tmp_path / "pf" / "index.html").read_text()
    cards = parse_cards(page)
    assert [c["status"] for c in cards] == ["failed", "failed"]
    assert 'id="labeled"' not in page
    assert not (tmp_path / "pf" / "overlays").exists() or not list(
        (tmp_path / "pf" / "overlays").glob("0*.jpg")
    )


def test_preview_on_memory_filesystem():
    root = f"memory://preview-{uuid.uuid4().hex}"
    try:
        out = build_fixture(root)
        assert run_cli(["preview", out]) == 0
        fs = fsspec.filesystem("memory")
        base = out[len("memory://") :] + "/preview"
        page = fs.cat_file("/" + base + "/index.html").decode()
        cards = parse_cards(page)
        assert sum(c["status"] == "labeled" for c in cards) == 3
        overlays = fs.ls("/" + base + "/overlays", detail=False)
        assert len([p for p in overlays if p.rsplit("/", 1)[-1][0].isdigit()]) == 3
    finally:
        fs = fsspec.filesystem("memory")
        if fs.exists("/" + root[len("memory://") :]):
            fs.rm("/" + root[len("memory://") :], recursive=True)


def test_preview_missing_output_is_an_error(tmp_path, capsys):
    assert run_cli(["preview", str(tmp_path / "nothing")]) == 2
    assert "error" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# headless browser


def _render_with_playwright(url: str, shot: Path) -> dict:
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as profile, sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(
            profile,
            executable_path=CHROMIUM,
            headless=True,
            args=[f for f in CHROMIUM_FLAGS if f != "--headless"],
            viewport={"width": 1400, "height": 1600},
        )
        try:
            page = ctx.new_page()
            page.goto(url, wait_until="load")
            # thumbnails are loading="lazy": bring them all into view, then wait for them
            page.evaluate("window.scrollTo(0, document.body.scrollHeight)")
            page.wait_for_function(
                "() => Array.from(document.querySelectorAll('img.thumb')).every(i => i.complete)",
                timeout=15000,
            )
            page.evaluate("window.scrollTo(0, 0)")
            info = page.evaluate(
                """() => ({
                  thumbs: Array.from(document.querySelectorAll('section#labeled img.thumb')).map(
                      i => ({loaded: i.complete && i.naturalWidth > 0, shown: i.getBoundingClientRect().width})),
                  failedThumbs: Array.from(document.querySelectorAll('section#failed img.thumb')).map(
                      i => i.complete && i.naturalWidth > 0),
                  counts: Array.from(document.querySelectorAll('section#labeled .n-annotations')).map(e => e.innerText),
                  reasons: Array.from(document.querySelectorAll('section#failed p.reason')).map(e => e.innerText),
                  summary: document.querySelector('#n-failed').innerText,
                  text: document.body.innerText,
                })"""
            )
            page.screenshot(path=str(shot), full_page=True)
        finally:
            ctx.close()
    info["engine"] = "playwright"
    return info


def _render_with_cli(url: str, shot: Path) -> dict:
    """Fallback without Playwright: Chromium's own --dump-dom and --screenshot."""
    with tempfile.TemporaryDirectory() as profile:
        base = [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--window-size=1400,1600"]
        dom = subprocess.run(
            base + ["--dump-dom", url], capture_output=True, text=True, timeout=60, check=False
        ).stdout
        subprocess.run(
            base + [f"--screenshot={shot}", url], capture_output=True, timeout=60, check=False
        )
    cards = parse_cards(dom)
    labeled = [c for c in cards if c["status"] == "labeled"]
    failed = [c for c in cards if c["status"] == "failed"]
    return {
        "engine": "chromium-cli",
        "thumbs": [{"loaded": None, "shown": None} for c in labeled for _ in c["imgs"]],
        "failedThumbs": [None for c in failed for _ in c["imgs"]],
        "counts": [c["annotations"] for c in labeled],
        "reasons": [c["text"] for c in failed],
        "summary": m.group(1) if (m := re.search(r'id="n-failed">(\d+)<', dom)) else "",
        "text": dom,
    }


def _check_rendered(info: dict, shot: Path) -> None:
    """Assert on what the browser rendered: thumbnails, counts, reasons, overlay pixels."""
    assert len(info["thumbs"]) == 3
    if info["engine"] == "playwright":
        assert all(t["loaded"] and t["shown"] > 100 for t in info["thumbs"])
        assert info["failedThumbs"] == [True]
    assert len(info["failedThumbs"]) == 1  # the failure whose source is gone has a placeholder
    assert [str(c) for c in info["counts"]] == ["1", "2", "3"]
    assert len(info["reasons"]) == 2
    assert REASON_OOM in info["reasons"][0] and REASON_MISSING in info["reasons"][1]
    assert info["summary"].strip() == "2"
    text = info["text"]
    assert "<b>sign</b> & co" in text or "&lt;b&gt;sign&lt;/b&gt; &amp; co" in text
    # the screenshot shows the overlays: many pixels of the blended mask color on black ...
    px = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    blend = np.array([round(0.45 * c) for c in PALETTE[0]])
    near = np.abs(px - blend).max(axis=-1) <= 20
    assert near.sum() > 3 * 5000, f"overlay color covers only {near.sum()} screenshot pixels"
    # ... and the thumbnail of the readable failed source (uniform gray 200)
    gray = np.abs(px - 200).max(axis=-1) <= 6
    assert gray.sum() > 5000, f"failed-image thumbnail covers only {gray.sum()} screenshot pixels"


needs_chromium = pytest.mark.skipif(
    not os.path.exists(CHROMIUM),
    reason="needs /usr/bin/chromium: run scripts/install_system_deps.sh",
)


def _gallery(tmp_path: Path) -> Path:
    out = build_fixture(str(tmp_path))
    assert run_cli(["preview", out]) == 0
    return tmp_path / "out" / "preview" / "index.html"


@needs_chromium
def test_gallery_renders_in_headless_chromium(tmp_path):
    """Playwright driving the system Chromium when installed, else Chromium's CLI."""
    index = _gallery(tmp_path)
    shot = tmp_path / "shot.png"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        info = _render_with_cli(index.as_uri(), shot)
    else:
        info = _render_with_playwright(index.as_uri(), shot)
    _check_rendered(info, shot)


@needs_chromium
def test_gallery_renders_with_chromium_cli(tmp_path):
    """The dependency-free path: ``chromium --headless --dump-dom`` and ``--screenshot``."""
    index = _gallery(tmp_path)
    shot = tmp_path / "shot.png"
    _check_rendered(_render_with_cli(index.as_uri(), shot), shot)


def test_install_script_is_idempotent_apt_install():
    script = Path(__file__).resolve().parent.parent / "scripts" / "install_system_deps.sh"
    text = script.read_text()
    assert os.access(script, os.X_OK)
    assert "apt-get install" in text and "chromium" in text
    assert (
        shutil.which("bash") is None
        or subprocess.run(["bash", "-n", str(script)], check=False).returncode == 0
    )
