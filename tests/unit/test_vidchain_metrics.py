"""DVC / grounding metrics against hand-worked values (exact-match caption scorer) and against pycocoevalcap's own
METEOR / CIDEr on the pairs the protocol must form."""

import numpy as np
import pytest

from dvr1.vidchain.metrics import (NO_MATCH, captions_score, count_score, dvc_metrics, grounding_metrics,
                                   ordered_max_alignment, segments_score, soda_c, tokenize_caption)


class Exact:
    """Stand-in scorer: 1 if the hypothesis equals the reference, corpus score = mean."""

    def compute_score(self, gts, res):
        per = [float(res[k][0] == gts[k][0]) for k in sorted(gts)]
        return float(np.mean(per)), per


GTS = {"v1": ([(0, 10), (20, 30)], ["a b", "c d"]), "v2": ([(0, 5)], ["e f"])}
PREDS = {"v1": [((0, 10), "A b."), ((18, 30), "c d"), ((50, 60), "x")]}


def test_dvc_hand_worked():
    m = dvc_metrics(PREDS, GTS, {"EM": Exact()})
    # v1 at t<=0.7: pairs (a b|a b)=1, (c d|c d)=1 [IoU 10/12], (x|none)=0 -> 2/3; at 0.9 -> 1/3; v2 no preds -> 0
    for t in (0.3, 0.5, 0.7):
        assert m[f"EM@{t}"] == pytest.approx(1 / 3)
        assert m[f"Precision@{t}"] == pytest.approx(1 / 3) and m[f"Recall@{t}"] == pytest.approx(0.5)
    assert m["EM@0.9"] == pytest.approx(1 / 6)
    assert m["Precision@0.9"] == pytest.approx(1 / 6) and m["Recall@0.9"] == pytest.approx(0.25)
    assert m["EM"] == pytest.approx(7 / 24)
    assert m["Recall"] == pytest.approx((3 * 0.5 + 0.25) / 4)


def test_soda_and_step_scores_hand_worked():
    assert ordered_max_alignment(np.array([[0.0, 1.0], [1.0, 0.0]])) == 1.0  # crossing pairs are not both allowed
    assert ordered_max_alignment(np.array([[1.0, 0.0], [0.0, 1.0]])) == 2.0
    # gt [(0,10) a, (20,30) b]; preds (0,10) a, (20,25) b, (25,30) b: best sum 1 + 0.5 = 1.5; P=.5 R=.75 F1=.6
    s = soda_c([(0, 10), (20, 25), (25, 30)], ["a", "b", "b"], [(0, 10), (20, 30)], ["a", "b"], Exact())
    assert s == pytest.approx(0.6)
    assert soda_c([], [], [(0, 1)], ["a"], Exact()) == 0.0
    assert count_score(3, 3) == 100.0 and count_score(2, 4) == 50.0 and count_score(9, 3) == 0.0
    assert count_score(None, 3) == 0.0
    # IoUs 1 and 5/15 on the diagonal; F1 with |P|=|G|=2 -> 100 * (4/3) / 2
    assert segments_score([(0, 10), (20, 25)], [(0, 10), (15, 30)]) == pytest.approx(100 * 2 / 3)
    assert segments_score([(0, 10)], [(5, 15)]) == pytest.approx(100 / 3)
    assert segments_score(None, [(0, 1)]) == 0.0
    # 1 of 3 captions right against 2 gt: sum 1, P=1/3, R=1/2, F1=0.4
    assert captions_score(["a", "x", "y"], ["a", "b"], Exact()) == pytest.approx(40.0)
    assert captions_score(None, ["a"], Exact()) == 0.0


def test_grounding_hand_worked():
    m = grounding_metrics([(0, 10), (5, 15), None], [(0, 10), (0, 10), (0, 10)])
    assert m["mIoU"] == pytest.approx(4 / 9)
    assert m["R1@0.3"] == pytest.approx(2 / 3) and m["R1@0.5"] == pytest.approx(1 / 3)
    assert m["R1@0.7"] == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match=r"^grounding_metrics: 1 predictions for 2 queries$"):
        grounding_metrics([(0, 1)], [(0, 1), (0, 2)])


def test_equals_pycocoevalcap_meteor_cider():
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor

    meteor, cider = Meteor(), Cider()
    gts = {"v1": ([(0, 10), (20, 30)], ["A red disc moves left.", "a blue square moves up"])}
    preds = {"v1": [((0, 10), "a red disc moves right"), ((21, 30), "a blue square moves up"), ((40, 50), "x y")]}
    m = dvc_metrics(preds, gts, {"METEOR": meteor, "CIDEr": cider}, tious=(0.5, 0.95))
    refs = {0: ["a red disc moves left"], 1: ["a blue square moves up"], 2: [NO_MATCH]}
    hyps = {0: ["a red disc moves right"], 1: ["a blue square moves up"], 2: ["x y"]}
    assert m["METEOR@0.5"] == pytest.approx(meteor.compute_score(refs, hyps)[0], abs=1e-9)
    assert m["CIDEr@0.5"] == pytest.approx(cider.compute_score(refs, hyps)[0], abs=1e-9)
    refs95 = {0: ["a red disc moves left"], 1: [NO_MATCH], 2: [NO_MATCH]}
    assert m["METEOR@0.95"] == pytest.approx(meteor.compute_score(refs95, hyps)[0], abs=1e-9)
    assert m["METEOR"] == pytest.approx((m["METEOR@0.5"] + m["METEOR@0.95"]) / 2)
    assert 0.0 < m["METEOR@0.95"] < m["METEOR@0.5"] < 1.0
    # caption step: segment-level METEOR of identical captions is METEOR's self-score, a wrong word lowers it
    full = captions_score(["a blue square moves up"], ["a blue square moves up"], meteor)
    assert full == pytest.approx(100 * meteor.compute_score({0: ["a blue square moves up"]},
                                                            {0: ["a blue square moves up"]})[1][0])
    assert captions_score(["a blue square moves down"], ["a blue square moves up"], meteor) < full
    assert tokenize_caption("A red, disc. Moves!") == "a red disc moves"
