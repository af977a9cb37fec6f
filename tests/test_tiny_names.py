"""tiny's colour words: one token each, fitted rows only, every other weight as seeded."""

from __future__ import annotations

import torch
from transformers import CLIPTextConfig, CLIPTextModel

from labeler.models.tiny.model import TEXT_CONFIG, TINY_SEED, _text_directions, tokenizer_vocabulary
from labeler.models.tiny.names import COLOUR_NAMES, colour_targets


def test_colour_words_are_single_tokens_and_other_text_is_spelled_as_before(tiny_backbone):
    tokenizer = tiny_backbone.tokenizer
    vocab, _ = tokenizer_vocabulary()
    for word in COLOUR_NAMES:
        ids = tokenizer(f"a {word.upper()} car").input_ids
        assert len(ids) == 2 + 1 + 1 + 3 and ids[2] >= len(vocab)
    assert all(i < len(vocab) for i in tokenizer("part part redwood, greener").input_ids)
    assert tokenizer("").input_ids == [vocab["<|startoftext|>"], vocab["<|endoftext|>"]]


def test_only_the_colour_rows_differ_from_the_seeded_text_encoder(tiny_backbone):
    vocab, _ = tokenizer_vocabulary()
    config = CLIPTextConfig(vocab_size=len(vocab), bos_token_id=vocab["<|startoftext|>"],
                            eos_token_id=vocab["<|endoftext|>"], pad_token_id=vocab["<|endoftext|>"],
                            **TEXT_CONFIG)
    torch.manual_seed(TINY_SEED + 2)
    seeded = CLIPTextModel(config).state_dict()
    built = tiny_backbone.text_encoder.state_dict()
    for name, weight in seeded.items():
        if name.endswith("token_embedding.weight"):
            assert built[name].shape[0] == len(vocab) + len(COLOUR_NAMES)
            built_weight = built[name][: len(vocab)]
        else:
            built_weight = built[name]
        torch.testing.assert_close(built_weight.float(), weight.float(), rtol=0, atol=0)


def test_each_word_points_at_its_colour(tiny_backbone):
    tokenizer, text_encoder = tiny_backbone.tokenizer, tiny_backbone.text_encoder
    _, features, _ = _text_directions(tokenizer, text_encoder)
    ids = torch.tensor(tokenizer(list(COLOUR_NAMES), padding="max_length", max_length=77).input_ids)
    with torch.no_grad():
        states = text_encoder(ids)[0][:, 1].float()
        targets = colour_targets(tiny_backbone.vae.float())
    cosine = torch.nn.functional.cosine_similarity(states @ features.T, targets, dim=1)
    assert (cosine > 0.98).all(), cosine
    similar = (states @ features.T) @ targets.T  # (word, colour)
    assert similar.argmax(dim=1).tolist() == list(range(len(COLOUR_NAMES)))
