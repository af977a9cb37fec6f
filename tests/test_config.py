"""Job configuration: TOML, flag overrides, fingerprint and refusal messages."""

from __future__ import annotations

import pytest

from labeler.config import build_config, load_job_file, settings_difference
from labeler.errors import UserError


def test_flags_override_the_job_file(tmp_path):
    job = tmp_path / "job.toml"
    job.write_text('input = "a"\noutput = "b"\nmodel = "tiny"\n[diffseg]\nkl_threshold = 0.9\n')
    config = build_config(load_job_file(job), {"model": None, "output": "c", "batch_size": 8})
    assert (config.input, config.output, config.model, config.batch_size) == ("a", "c", "tiny", 8)
    assert config.settings.kl_threshold == 0.9


def test_fingerprint_ignores_scale_knobs_but_not_settings():
    base = build_config({}, {"input": "in", "output": "out", "model": "tiny"})
    scaled = build_config(
        {},
        {
            "input": "in",
            "output": "elsewhere",
            "model": "tiny",
            "workers": 8,
            "batch_size": 32,
            "address": "auto",
        },
    )
    changed = build_config(
        {"diffseg": {"kl_threshold": 0.8}}, {"input": "in", "output": "out", "model": "tiny"}
    )
    assert base.fingerprint() == scaled.fingerprint()
    assert base.fingerprint() != changed.fingerprint()
    assert settings_difference(base.output_settings(), changed.output_settings()) == [
        "diffseg.kl_threshold: 1.1 -> 0.8"
    ]


def test_default_model_per_method():
    assert (
        build_config({}, {"input": "i", "output": "o"}).model_name
        == "CompVis/stable-diffusion-v1-4"
    )


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"input": "i"}, "--output is required"),
        ({"input": "i", "output": "o", "method": "magic"}, "unknown method"),
        ({"input": "i", "output": "o", "method": "slime"}, "needs --embeddings"),
        ({"input": "i", "output": "o", "colour": 1}, "unknown job settings: colour"),
        (
            {"input": "i", "output": "o", "diffseg": {"tau": 1}},
            r"unknown \[diffseg\] settings: tau",
        ),
        ({"input": "i", "output": "o", "batch_size": 0}, "batch_size: must be >= 1"),
    ],
)
def test_bad_settings_are_refused_with_a_clear_message(values, message):
    with pytest.raises(ValueError, match=message):
        build_config(values, {})


def test_bad_job_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("input = ")
    with pytest.raises(ValueError, match="not valid TOML"):
        load_job_file(bad)
    with pytest.raises(ValueError, match="does not exist"):
        load_job_file(tmp_path / "missing.toml")


def test_a_field_that_parses_strings_takes_one_and_other_fields_still_refuse_them():
    base = {"input": "in", "output": "out", "method": "diffews", "support_images": "s",
            "support_masks": "m"}
    # --classes background,red on the command line reaches the table as one string
    assert build_config(base, {"classes": "background, red"}).settings.classes == (
        "background", "red")
    assert build_config({**base, "classes": ["background", "red"]}, {}).settings.classes == (
        "background", "red")
    with pytest.raises(UserError, match=r"\[diffews\] .*must be"):
        build_config({**base, "classes": "background,red", "diffews": {"ratio": "0.5"}}, {})
