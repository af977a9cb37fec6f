"""Hand-computed cases for every evaluation protocol in ``labeler.metrics``.

Each expected number below was worked out by hand (the arithmetic is in the comments); each
case is built so that a plausible wrong formula gives a different number.
"""

from __future__ import annotations

import numpy as np
import pytest

from labeler import metrics as M

VOID = M.VOID


def test_confusion_matrix_ignores_255_negative_and_out_of_range_gt():
    gt = np.array([[0, 0, 1], [1, 2, 255], [-1, 7, 2]])
    pred = np.array([[0, 1, 1], [VOID, 2, 0], [1, 1, 5]])
    cm = M.confusion_matrix(gt, pred, num_classes=3, num_pred=3)
    # pairs kept: (0,0) (0,1) (1,1) (1,void) (2,2) (2, 5 -> void because >= num_pred)
    expected = np.array(
        [
            [1, 1, 0, 0],
            [0, 1, 0, 1],
            [0, 0, 1, 1],
        ]
    )
    np.testing.assert_array_equal(cm, expected)


def test_confusion_matrix_default_width_grows_with_predicted_ids():
    cm = M.confusion_matrix(np.array([0, 1]), np.array([4, 0]), num_classes=2)
    assert cm.shape == (2, 6)  # P = max(K, 4 + 1) = 5, plus the void column
    assert cm[0, 4] == 1 and cm[1, 0] == 1


def test_iou_identical_disjoint_and_symmetric():
    a = np.array([0, 0, 1, 1, 1, 0])
    b = np.array([0, 1, 1, 0, 1, 0])
    same = M.slime_image_ious(M.confusion_matrix(a, a, 2))
    np.testing.assert_allclose(same, [1.0, 1.0])
    disjoint = M.slime_image_ious(M.confusion_matrix(a, 1 - a, 2))
    np.testing.assert_allclose(disjoint, [0.0, 0.0])
    ab = M.slime_image_ious(M.confusion_matrix(a, b, 2))
    ba = M.slime_image_ious(M.confusion_matrix(b, a, 2))
    # class 1: a = {2,3,4}, b = {1,2,4}: inter 2, union 4 -> 0.5; class 0 likewise 2/4
    np.testing.assert_allclose(ab, [0.5, 0.5])
    np.testing.assert_allclose(ab, ba)


# Two images, K = 2 (0 = background, 1 = object); used by the dataset mIoU and SLiMe tests.
#   A: gt [0 0 1 1]  pred [0 1 1 1]
#   B: gt [0 0 0 0]  pred [0 0 0 1]   (class 1 absent from B's ground truth, predicted once)
IMG_A = (np.array([[0, 0, 1, 1]]), np.array([[0, 1, 1, 1]]))
IMG_B = (np.array([[0, 0, 0, 0]]), np.array([[0, 0, 0, 1]]))


def test_dataset_miou_from_summed_confusion_matrix():
    total = None
    for gt, pred in (IMG_A, IMG_B):
        total = M.add_confusion(total, M.confusion_matrix(gt, pred, 2))
    # summed cm = [[4, 2], [0, 2]]
    np.testing.assert_array_equal(total[:, :2], [[4, 2], [0, 2]])
    s = M.semantic_scores(total)
    # IoU0 = 4 / (6 + 4 - 4) = 2/3 ; IoU1 = 2 / (2 + 4 - 2) = 1/2
    np.testing.assert_allclose(s.iou, [2 / 3, 1 / 2])
    assert s.miou == pytest.approx((2 / 3 + 1 / 2) / 2)  # 0.583333
    assert s.pixel_accuracy == pytest.approx(6 / 8)
    assert s.mean_accuracy == pytest.approx((4 / 6 + 2 / 2) / 2)
    # The per-image average of image mIoUs would be different: guard against that formula.
    per_image = np.mean(
        [M.semantic_scores(M.confusion_matrix(g, p, 2)).miou for g, p in (IMG_A, IMG_B)]
    )
    assert s.miou != pytest.approx(per_image)


def test_dataset_miou_void_pixels_are_misses_and_nan_classes_skipped():
    gt = np.array([0, 0, 1, 1])
    pred = np.array([0, VOID, 1, 1])
    s = M.semantic_scores(M.confusion_matrix(gt, pred, num_classes=3))
    # IoU0 = 1 / (2 + 1 - 1) = 0.5 ; IoU1 = 2/2 = 1 ; class 2 never seen -> NaN, skipped
    np.testing.assert_allclose(s.iou[:2], [0.5, 1.0])
    assert np.isnan(s.iou[2])
    assert s.miou == pytest.approx(0.75)
    assert s.pixel_accuracy == pytest.approx(3 / 4)


def test_dataset_miou_counts_false_positives_of_classes_absent_from_gt():
    gt = np.array([0, 0, 0, 0])
    pred = np.array([0, 0, 0, 2])
    s = M.semantic_scores(M.confusion_matrix(gt, pred, num_classes=3))
    # class 2: TP 0, FP 1 -> IoU 0 (counted, unlike SLiMe); class 1: NaN; class 0: 3/4
    np.testing.assert_allclose(s.iou[[0, 2]], [0.75, 0.0])
    assert s.miou == pytest.approx(0.375)


def test_slime_per_image_protocol():
    acc = M.SlimeAccumulator(2)
    a = acc.add(M.confusion_matrix(*IMG_A, 2))
    b = acc.add(M.confusion_matrix(*IMG_B, 2))
    # A: class 0: inter 1, union 2 -> 1/2 ; class 1: inter 2, union 3 -> 2/3
    np.testing.assert_allclose(a, [1 / 2, 2 / 3])
    # B: class 0: inter 3, union 4 -> 3/4 ; class 1 absent from GT -> skipped (NaN), its FP ignored
    assert b[0] == pytest.approx(3 / 4) and np.isnan(b[1])
    # per class = mean over images where present: c0 = (1/2 + 3/4)/2 = 5/8 ; c1 = 2/3 (one image)
    np.testing.assert_allclose(acc.per_class(), [5 / 8, 2 / 3])
    np.testing.assert_array_equal(acc.n_images, [2, 1])
    # paper mIoU = mean of per-class columns, background included: (5/8 + 2/3)/2 = 31/48
    assert acc.miou() == pytest.approx(31 / 48)
    # validation-style: mean over images of image means: ((1/2 + 2/3)/2 + 3/4)/2 = 2/3
    assert acc.mean_image_miou() == pytest.approx(2 / 3)
    # If absent classes were scored (IoU 0 in B), c1 would be 1/3 and mIoU 23/48: must differ.
    assert acc.miou() != pytest.approx((5 / 8 + 1 / 3) / 2)


def test_slime_ignored_pixels_are_not_counted():
    gt = np.array([[1, 1, 255, 0]])
    pred = np.array([[1, 1, 1, 0]])
    ious = M.slime_image_ious(M.confusion_matrix(gt, pred, 2))
    np.testing.assert_allclose(ious, [1.0, 1.0])  # the prediction under 255 is no false positive


# DiffSeg per-image Hungarian case, K = 2.
#   A (6 px): gt [0 0 0 1 1 1], segments [0 0 1 1 1 2]
#   B (4 px): gt [1 1 0 0],     segments [0 0 0 void]
HUNG_A = (np.array([0, 0, 0, 1, 1, 1]), np.array([0, 0, 1, 1, 1, 2]))
HUNG_B = (np.array([1, 1, 0, 0]), np.array([0, 0, 0, VOID]))


def test_hungarian_per_image_protocol():
    acc = M.UnsupervisedAccumulator(2)
    ca = acc.add(M.confusion_matrix(*HUNG_A, 2))
    # A: H = [[2,1,0],[0,2,1]]; best one-to-one: 0->seg0, 1->seg1 (overlap 4)
    np.testing.assert_array_equal(ca.assignment, [0, 1])
    # TP [2,2]; FN = row sums - TP = [1,1]; FP = matched column sums - TP = [2-2, 3-2] = [0,1]
    np.testing.assert_array_equal(ca.tp, [2, 2])
    np.testing.assert_array_equal(ca.fn, [1, 1])
    np.testing.assert_array_equal(ca.fp, [0, 1])
    cb = acc.add(M.confusion_matrix(*HUNG_B, 2))
    # B: H = [[1,0],[2,0]] (+1 void px in row 0); best: 1->seg0 (2), 0->seg1 (empty)
    np.testing.assert_array_equal(cb.assignment, [1, 0])
    np.testing.assert_array_equal(cb.tp, [0, 2])
    np.testing.assert_array_equal(cb.fn, [2, 0])  # class 0: 1 px in seg0 + 1 void px
    np.testing.assert_array_equal(cb.fp, [0, 1])
    s = acc.scores()
    # totals: TP [2,4], FP [0,2], FN [3,1], ALL 10
    assert s.pixel_accuracy == pytest.approx(6 / 10)
    np.testing.assert_allclose(s.iou, [2 / 5, 4 / 7])
    assert s.miou == pytest.approx((2 / 5 + 4 / 7) / 2)  # 0.485714


def test_hungarian_dataset_level_variant():
    total = None
    for gt, pred in (HUNG_A, HUNG_B):
        total = M.add_confusion(total, M.confusion_matrix(gt, pred, 2))
    # summed H = [[3,1,0 | void 1],[2,2,1 | void 0]]
    np.testing.assert_array_equal(total, [[3, 1, 0, 1], [2, 2, 1, 0]])
    s, assignment = M.dataset_hungarian_scores(total)
    # one matching: 0->seg0, 1->seg1 (3 + 2 = 5 beats every alternative)
    np.testing.assert_array_equal(assignment, [0, 1])
    # TP [3,2]; FN [5-3, 5-2] = [2,3]; FP [5-3, 3-2] = [2,1]; ALL 10
    np.testing.assert_array_equal(s.tp, [3, 2])
    np.testing.assert_array_equal(s.fn, [2, 3])
    np.testing.assert_array_equal(s.fp, [2, 1])
    assert s.pixel_accuracy == pytest.approx(5 / 10)
    np.testing.assert_allclose(s.iou, [3 / 7, 2 / 6])
    assert s.miou == pytest.approx((3 / 7 + 1 / 3) / 2)  # 0.380952


def test_hungarian_matches_absent_classes_like_the_reference():
    # K = 3, the image holds class 0 only, split into two segments of 2 px. As in DiffSeg's
    # reference, every class gets a column (C_pred = max(K, max id + 1) = 3): class 0 takes one
    # segment, an absent class takes the other non-empty one and is charged its 2 px as FP.
    cm = M.confusion_matrix(np.array([0, 0, 0, 0]), np.array([0, 0, 1, 1]), 3)
    acc = M.UnsupervisedAccumulator(3)
    counts = acc.add(cm)
    assert counts.tp.tolist()[0] == 2 and counts.fn.tolist()[0] == 2
    assert counts.fp.sum() == 2 and counts.fp[0] == 0
    s = acc.scores()
    # IoU: class 0 = 2/(2+0+2) = 1/2 ; one absent class 0/(0+2+0) = 0 ; the other 0/0 -> NaN
    assert s.pixel_accuracy == pytest.approx(0.5)
    assert s.miou == pytest.approx(0.25)


def test_hungarian_is_invariant_to_segment_relabelling():
    gt, pred = HUNG_A
    perm = np.array([7, 3, 0])  # seg0 -> 7, seg1 -> 3, seg2 -> 0
    a = M.hungarian_counts(M.confusion_matrix(gt, pred, 2))
    b = M.hungarian_counts(M.confusion_matrix(gt, perm[pred], 2))
    np.testing.assert_array_equal(a.tp, b.tp)
    np.testing.assert_array_equal(a.fp, b.fp)
    np.testing.assert_array_equal(a.fn, b.fn)


def test_perfect_segments_give_full_scores():
    gt = np.array([[0, 0, 1], [2, 2, 1]])
    pred = np.array([[5, 5, 9], [1, 1, 9]])
    acc = M.UnsupervisedAccumulator(3)
    acc.add(M.confusion_matrix(gt, pred, 3))
    s = acc.scores()
    assert s.pixel_accuracy == 1.0 and s.miou == 1.0
