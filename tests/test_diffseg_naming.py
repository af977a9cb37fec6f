"""DiffSeg naming, the pure parts: packing names, shares over all of a name's tokens, the rule."""

from __future__ import annotations

import pytest
import torch

from labeler.errors import UserError
from labeler.methods.diffseg.method import categories
from labeler.methods.diffseg.naming import NameRule, name_segments, name_shares, pack_names
from labeler.methods.diffseg.segmenter import merge_named
from labeler.methods.diffseg.settings import DiffSegOptions
from labeler.settings import parse_settings


def test_names_are_packed_after_bos_then_the_empty_prompts_states():
    empty = torch.arange(10.0)[:, None].expand(10, 3)  # row i = i: BOS, EOS, padding
    names = [torch.full((1, 3), 100.0), torch.full((3, 3), 200.0)]  # one- and three-token names
    context, spans = pack_names(names, empty)
    assert spans == [(1, 2), (2, 5)]
    assert context[:, 0].tolist() == [0, 100, 200, 200, 200, 5, 6, 7, 8, 9]
    with pytest.raises(ValueError, match="at most 8"):
        pack_names([torch.zeros(9, 3)], empty)


def test_a_name_takes_the_share_of_every_one_of_its_tokens():
    """Name 1 is spelled by tokens 2-4; its share is their sum, so attention spread over a
    multi-token name counts whole (word index + 1 would see a third of it)."""
    side, tokens = 4, 8
    maps = torch.zeros(1, side * side, tokens)
    maps[..., 0] = 0.4  # BOS
    maps[..., 1] = 0.3  # name 0
    maps[..., 2:5] = 0.1  # name 1, three tokens
    shares = name_shares({side: maps, 2: maps[:, :4]}, [(1, 2), (2, 5)], (8, 8))
    assert shares.shape == (1, 2, 8, 8)
    torch.testing.assert_close(shares[0, 0], torch.full((8, 8), 0.3))
    torch.testing.assert_close(shares[0, 1], torch.full((8, 8), 0.3))


def _shares() -> torch.Tensor:
    """Two names over a 4x4 grid: name 0 on the left half, name 1 on the top-right quarter."""
    shares = torch.full((2, 4, 4), 0.01)
    shares[0, :, :2] = 0.6
    shares[1, :2, 2:] = 0.5
    return shares


def test_segments_take_the_name_that_attends_to_them_and_abstain_otherwise():
    labels = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 2, 2], [0, 0, 2, 2]])
    names, scores = name_segments(labels, _shares(), NameRule(share=0.1, margin=1.1))
    assert names.tolist() == [0, 1, -1]  # segment 2: no name takes 10 % of its attention
    torch.testing.assert_close(scores, torch.tensor([0.6, 0.5, 0.01]))
    names, _ = name_segments(labels, _shares(), NameRule(share=0.0, margin=1.0))
    assert names[2] in (0, 1)  # without the share floor, some name always wins (the reference)


def test_two_names_claiming_a_segment_alike_abstain_by_the_margin():
    shares = torch.full((2, 4, 4), 0.01)
    shares[0, :, :2] = 0.4  # both names on the left half
    shares[1, :, :2] = 0.3
    shares[0, :, 2:] = 0.5  # name 0 alone on the right half
    labels = torch.tensor([[0, 0, 1, 1]] * 4)
    names, _ = name_segments(labels, shares, NameRule(share=0.1, margin=1.1))
    assert names.tolist() == [0, 0]  # 0.4 > 1.1 x 0.3
    names, _ = name_segments(labels, shares, NameRule(share=0.1, margin=1.5))
    assert names.tolist() == [-1, 0]  # ... but not 1.5 x


def test_a_name_is_judged_by_its_share_not_by_where_else_it_attends():
    """A name absent from the image draws faint attention; the reference's spatial
    normalisation would let that faint map win a segment another name explains better."""
    shares = torch.full((2, 4, 4), 0.001)
    shares[0, :, :2] = 0.6  # name 0: its own region on the left ...
    shares[0, :, 2:] = 0.3  # ... and much of the right
    shares[1, :, 2:] = 0.2  # name 1: faint, only on the right
    labels = torch.tensor([[0, 0, 1, 1]] * 4)
    names, _ = name_segments(labels, shares, NameRule(share=0.1, margin=1.1))
    assert names.tolist() == [0, 0]


def test_ids_without_pixels_abstain():
    labels = torch.tensor([[0, 0, 2, 2]] * 4)
    names, scores = name_segments(labels, _shares(), NameRule(share=0.0, margin=1.0))
    assert names[1] == -1 and scores[1] == 0


def test_segments_sharing_a_name_merge_into_the_lowest_id_with_area_weighted_scores():
    labels = torch.tensor([[0, 1, 2, 3]])
    names = torch.tensor([4, -1, 4, -1])
    merged, scores = merge_named(labels, names, torch.tensor([0.2, 0.9, 0.5, 0.1]))
    assert merged.tolist() == [[0, 1, 0, 3]]
    torch.testing.assert_close(scores[0], torch.tensor(0.35))


def test_categories_are_the_names_then_segment_unless_dropped():
    assert [c["name"] for c in categories(DiffSegOptions())] == ["segment"]
    named = categories(DiffSegOptions(names=["red", " light  blue"]))
    assert [(c["id"], c["name"]) for c in named] == [(1, "red"), (2, "light blue"), (3, "segment")]
    dropped = categories(DiffSegOptions(names=["red"], unnamed="drop"))
    assert [c["name"] for c in dropped] == ["red"]


@pytest.mark.parametrize("bad", [{"names": "a,b"}, {"names": []}, {"names": ["a", "a"]}, {"names": [" "]}, {"names": ["segment"]},
                                 {"names": [1]}, {"unnamed": "keep"}, {"name_margin": 0.5},
                                 {"conditioning": "caption"}])
def test_bad_naming_settings_are_user_errors(bad):
    with pytest.raises(UserError):
        parse_settings(DiffSegOptions, bad, "diffseg")
