"""Caption naming: the noun rule, category ids, the captioner's loading (tiny, a saved folder,
object storage, errors), its pre-flight check, and `labeler run --captioner` end to end."""

from __future__ import annotations

import contextlib
import io
import json

import fsspec
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO

import labeler
from labeler.cli import main
from labeler.config import build_config
from labeler.errors import UserError
from labeler.methods.diffseg.captions import (
    ID_SPAN,
    UNNAMED_ID,
    caption_nouns,
    category_id,
    singular,
)
from labeler.models.captioner import load_captioner
from labeler.models.locate import ModelLoadError
from labeler.models.tiny.captioner import (
    COLOUR_NAMES,
    UNNAMED_COLOURS,
    caption_of,
    tiny_captioner_dir,
)
from labeler.output.reader import OutputReadError, with_used_categories
from labeler.testing.worlds import colour_world

PALETTE = np.array([*COLOUR_NAMES.values(), *UNNAMED_COLOURS])


def _cli(*args: str) -> int:
    with contextlib.redirect_stdout(io.StringIO()):
        return main(list(args))


def _world(seed: int, size: int = 128) -> tuple[np.ndarray, str]:
    """A colour world and the caption the tiny captioner is fitted to give it."""
    image, colour = colour_world(np.random.default_rng(seed), PALETTE, size)
    shares = {name: float((colour == index).mean()) for index, name in enumerate(COLOUR_NAMES)}
    return image, caption_of(shares)


@pytest.mark.parametrize(("caption", "nouns"), [
    ("a man riding a horse on a beach", ("man", "horse", "beach")),
    ("two red cups on a wooden table", ("cup", "table")),
    ("a person holding a cell phone", ("person", "phone")),
    ("there are two dogs playing in the snow", ("dog", "snow")),
    ("a tall building with many windows", ("building", "window")),
    ("a group of people standing next to each other", ("group", "person")),
    ("red and blue and green", ("red", "blue", "green")),
    ("a dog, a dog and a cat.", ("dog", "cat")),
    ("", ()),
])
def test_nouns_follow_the_documented_rule(caption, nouns):
    assert caption_nouns(caption) == nouns


def test_plurals_become_singular():
    assert [singular(w) for w in ("boxes", "berries", "glasses", "grass", "women", "bus", "cars")] == [
        "box", "berry", "glasses", "grass", "woman", "bus", "car"]


def test_category_ids_depend_on_the_noun_alone():
    nouns = ["dog", "cat", "red", "traffic light", "person"]
    ids = [category_id(noun) for noun in nouns]
    assert ids == [category_id(noun) for noun in nouns]  # no state: same in every shard and run
    assert len(set(ids)) == len(ids)
    assert all(UNNAMED_ID < i <= ID_SPAN + 1 < 2**31 for i in ids)


def test_the_merge_lists_the_used_categories_and_refuses_a_collision():
    fixed = [{"id": UNNAMED_ID, "name": "segment", "supercategory": "segment"}]
    merged = with_used_categories(fixed, {UNNAMED_ID: {"segment"}, 9: {"zebra"}, 5: {"apple"}}, "name")
    assert merged == [*fixed, {"id": 5, "name": "apple", "supercategory": "name"},
                      {"id": 9, "name": "zebra", "supercategory": "name"}]
    with pytest.raises(OutputReadError, match="collided"):
        with_used_categories(fixed, {7: {"cat", "dog"}}, "name")


def test_names_and_captioner_are_exclusive():
    with pytest.raises(UserError, match="exclusive"):
        build_config({"input": "in", "output": "out", "method": "diffseg",
                      "diffseg": {"names": ["red"], "captioner": "tiny"}}, {})
    with pytest.raises(UserError, match="captioner"):
        build_config({"input": "in", "output": "out", "method": "diffseg",
                      "diffseg": {"captioner": ""}}, {})


def test_tiny_captioner_captions_colour_worlds_with_their_colours(labeler_cache):
    captioner = load_captioner("tiny", torch.device("cpu"), torch.float32)
    worlds = [_world(seed) for seed in range(8)]
    captions = captioner.caption([image for image, _ in worlds])
    assert captions == [captioner.caption([image])[0] for image, _ in worlds]  # batch-independent
    named = [set(caption_nouns(caption)) for caption in captions]
    wanted = [set(caption_nouns(caption)) for _, caption in worlds]
    found = sum(len(n & w) for n, w in zip(named, wanted))
    assert found >= 0.8 * sum(map(len, wanted))
    assert all(n <= set(COLOUR_NAMES) for n in named)


def test_captioner_loads_from_a_saved_folder_and_from_object_storage(tmp_path, labeler_cache):
    from transformers import BlipForConditionalGeneration, BlipProcessor

    source = tiny_captioner_dir()
    saved = tmp_path / "saved"
    BlipForConditionalGeneration.from_pretrained(source).save_pretrained(saved)
    BlipProcessor.from_pretrained(source).save_pretrained(saved)
    fs = fsspec.filesystem("memory")
    for path in saved.rglob("*"):
        if path.is_file():
            fs.pipe_file(f"/captioners/tiny/{path.relative_to(saved)}", path.read_bytes())
    image, _ = _world(1)
    captions = {name: load_captioner(name, torch.device("cpu"), torch.float32).caption([image])
                for name in ("tiny", str(saved), "memory://captioners/tiny")}
    assert len({tuple(c) for c in captions.values()}) == 1


def test_missing_and_broken_captioners_fail_clearly(tmp_path):
    load = lambda name: load_captioner(name, torch.device("cpu"), torch.float32)
    with pytest.raises(ModelLoadError, match="does not exist"):
        load(str(tmp_path / "nothing-here"))
    with pytest.raises(ModelLoadError, match="captioner model directory: it has no config.json"):
        load(str(tmp_path))
    with pytest.raises(ModelLoadError, match="could not load the captioner"):
        load("someone/no-such-captioner-offline")


def test_a_missing_captioner_is_refused_before_anything_starts(tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(_world(0, 32)[0]).save(photos / "a.png")
    output = tmp_path / "out"
    for captioner, message in ((str(tmp_path / "no-captioner"), "does not exist"),
                               ("someone/no-such-captioner-offline", "HF_HUB_OFFLINE"),
                               (str(photos), "captioner model directory")):
        code = _cli("run", "--method", "diffseg", "--model", "tiny", "--captioner", captioner,
                    "--executor", "local", "--input", str(photos), "--output", str(output))
        error = capsys.readouterr().err.strip()
        assert code == 2 and "[diffseg] captioner:" in error and message in error
        assert len(error.splitlines()) == 1
        assert not output.exists()


def test_a_caption_run_names_segments_with_stable_categories(tmp_path, labeler_cache):
    photos = tmp_path / "photos"
    photos.mkdir()
    for seed in range(2):
        Image.fromarray(_world(seed)[0]).save(photos / f"w{seed}.png")
    output = tmp_path / "out"
    args = ("run", "--method", "diffseg", "--model", "tiny", "--captioner", "tiny",
            "--executor", "local", "--shard-size", "1", "--input", str(photos), "--output",
            str(output), "--no-progress")
    assert _cli(*args) == 0

    coco = COCO(str(output / "coco.json"))
    categories = {c["id"]: c["name"] for c in coco.dataset["categories"]}
    nouns = {i: n for i, n in categories.items() if n != "segment"}
    assert nouns and set(nouns.values()) <= set(COLOUR_NAMES)
    assert all(i == category_id(n) for i, n in nouns.items())
    assert categories.get(UNNAMED_ID, "segment") == "segment"
    annotations = coco.loadAnns(coco.getAnnIds())
    assert {a["category_id"] for a in annotations} == set(categories)  # only categories in use
    assert {categories[a["category_id"]] for a in annotations} & set(COLOUR_NAMES)
    rows = pq.read_table(output / "annotations").to_pylist()
    assert {(r["category_id"], r["category_name"]) for r in rows} == {
        (a["category_id"], categories[a["category_id"]]) for a in annotations}

    before = (output / "coco.json").read_bytes()
    (output / "coco.json").unlink()
    assert _cli(*args) == 0  # a resume merges again from the shards: the same categories
    assert json.loads((output / "coco.json").read_bytes())["categories"] == json.loads(before)["categories"]
    assert _cli("verify", str(output)) == 0

    export = tmp_path / "yolo"
    assert _cli("export", str(output), "--format", "yolo-seg", "--out", str(export)) == 0


def test_caption_naming_keeps_the_segments_and_names_them_in_the_api(labeler_cache):
    image, _ = _world(2)
    plain = labeler.Labeler(method="diffseg", model="tiny", device="cpu").label(image)
    named = labeler.Labeler(method="diffseg", model="tiny", device="cpu", captioner="tiny").label(image)
    assert np.array_equal(plain.masks, named.masks)  # conditioning = "separate"
    assert named.name_scores is not None
    assert set(named.category_names) <= {*COLOUR_NAMES, "segment"}
    assert set(named.category_names) & set(COLOUR_NAMES)


def test_parity_conditioning_and_captions_without_nouns(labeler_cache):
    """``conditioning = "names"`` runs one pass conditioned on each image's nouns; an image whose
    caption has no noun (a flat grey image: tiny captions only its six colours) gets only
    unnamed segments, in the same batch as a named one."""
    grey = np.full((96, 96, 3), 128, np.uint8)
    image, _ = _world(2)
    captioner = labeler.Labeler(method="diffseg", model="tiny", device="cpu", captioner="tiny",
                                conditioning="names")
    assert captioner.segmenter.captioner.caption([grey]) == [""]
    named, unnamed = captioner.label_many([image, grey])
    assert set(named.category_names) & set(COLOUR_NAMES)
    assert set(unnamed.category_names) == {"segment"} and (unnamed.name_scores == 0).all()
    assert [c["name"] for c in unnamed.categories] == ["segment"]


@pytest.mark.slow
def test_caption_naming_figures_on_twelve_worlds(tiny_backbone):
    """Caption naming's figures (docs/diffseg.md): the twelve worlds of the vocabulary test, in
    batches of 4, each image's vocabulary its caption's nouns."""
    from labeler.methods.diffseg.segmenter import DiffSeg
    from labeler.methods.diffseg.settings import DiffSegOptions
    from tests.test_diffseg_names_tiny import tally, worlds

    data = worlds(12, seed=1)
    captioner = load_captioner("tiny", torch.device("cpu"), torch.float32)
    named = DiffSeg(tiny_backbone, DiffSegOptions(captioner="tiny"), captioner)
    counts = dict.fromkeys(("right", "wrong", "abstained", "named_outside", "mixed"), 0)
    try:
        for start in range(0, len(data), 4):
            batch = data[start:start + 4]
            for labels, (_, colour) in zip(named.label([image for image, _ in batch]), batch):
                categories = [{"id": int(i), "name": n} for i, n in
                              zip(labels.category_ids, labels.category_names)]
                for key, value in tally(labels, colour, categories).items():
                    counts[key] += value
    finally:
        named.close()
    print(counts)
    assert counts["right"] >= 0.8 * (counts["right"] + counts["wrong"]), counts
    assert counts["named_outside"] <= 0.1 * (counts["abstained"] + counts["named_outside"]), counts



def test_a_batch_encodes_its_distinct_nouns_in_one_call(tiny_backbone):
    """The batch's caption nouns go through the text encoder once, each distinct noun once, and
    every image's names row is the one it gets alone (its own nouns encoded by themselves, as
    they were before batching): the same context bits, so the same names, categories and
    scores."""
    from labeler.methods.diffseg.segmenter import DiffSeg
    from labeler.methods.diffseg.settings import DiffSegOptions

    images = [_world(seed)[0] for seed in range(4)]
    captioner = load_captioner("tiny", torch.device("cpu"), torch.float32)
    diffseg = DiffSeg(tiny_backbone, DiffSegOptions(captioner="tiny"), captioner)
    nouns = [caption_nouns(caption) for caption in captioner.caption(images)]
    distinct = set().union(*nouns)
    assert sum(map(len, nouns)) > len(distinct)  # some noun is in two captions
    tiny_backbone.encode_prompts([""])  # the empty prompt is encoded once and kept
    calls = []
    hook = tiny_backbone.text_encoder.register_forward_hook(
        lambda module, inputs, output: calls.append(inputs[0].shape[0]))
    try:
        with torch.no_grad():
            contexts, vocabularies = diffseg._caption_vocabularies(images)
            assert calls == [len(distinct)]
            alone = [diffseg._caption_vocabularies([image]) for image in images]
    finally:
        hook.remove()
        diffseg.close()
    assert calls[1:] == [len(n) for n in nouns if n]
    for index, (context, (vocabulary,)) in enumerate(alone):
        assert vocabularies[index] == vocabulary and vocabulary.names == nouns[index]
        assert torch.equal(contexts[index:index + 1], context)


def _seeded_captioner(folder, seed: int) -> None:
    """A BLIP shaped as the tiny captioner, its weights drawn from ``seed``, saved at ``folder``
    (over what is there) with the tiny captioner's processor."""
    from transformers import BlipConfig, BlipForConditionalGeneration, BlipProcessor

    source = tiny_captioner_dir()
    torch.manual_seed(seed)
    BlipForConditionalGeneration(BlipConfig.from_pretrained(source)).save_pretrained(folder)
    BlipProcessor.from_pretrained(source).save_pretrained(folder)


def test_a_captioner_rewritten_at_the_same_path_is_another_run(tmp_path, labeler_cache, capsys):
    photos, output, captioner = tmp_path / "photos", tmp_path / "out", tmp_path / "captioner"
    photos.mkdir()
    Image.fromarray(_world(0, 64)[0]).save(photos / "a.png")

    def fingerprint(name: str = str(captioner)) -> str:
        return build_config({"input": str(photos), "output": str(output), "method": "diffseg",
                             "model": "tiny", "diffseg": {"captioner": name}}, {}).fingerprint()

    _seeded_captioner(captioner, 1)
    first = fingerprint()
    args = ("run", "--method", "diffseg", "--model", "tiny", "--captioner", str(captioner),
            "--executor", "local", "--input", str(photos), "--output", str(output),
            "--no-progress")
    assert _cli(*args) == 0
    labeled = (output / "coco.json").read_bytes()

    _seeded_captioner(captioner, 2)  # another captioner at the same path
    unfitted = load_captioner(str(captioner), torch.device("cpu"), torch.float32)
    assert unfitted.max_new_tokens == 15  # tiny's 16 positions less the start token
    unfitted.caption([_world(0, 64)[0]])  # one that never says stop ends at its last position
    second = fingerprint()
    assert second != first
    capsys.readouterr()
    assert _cli(*args) == 2  # refused, as a changed model is: nothing rewritten
    assert "captioner_digest" in capsys.readouterr().err
    assert (output / "coco.json").read_bytes() == labeled
    assert _cli(*args, "--overwrite") == 0  # relabelled with the new captioner
    assert json.loads((output / "run" / "config.json").read_text())["fingerprint"] == second

    _seeded_captioner(captioner, 1)  # the first weights written again: the first run's digest
    assert fingerprint() == first
    for name in ("tiny", "someone/blip"):  # by name: fingerprints of earlier runs stand
        settings = build_config({"input": "in", "output": "out", "method": "diffseg",
                                 "diffseg": {"captioner": name}}, {}).output_settings()
        assert "captioner_digest" not in settings["diffseg"]
