"""Dense video captioning (DVC) and temporal grounding metrics (VidChain / ALGORITHMS §7).

Caption scores come from pycocoevalcap (maintained COCO caption evaluation): ``Meteor`` (METEOR 1.5, the bundled
jar, run with the local Java) and ``Cider``. Any object with pycocoevalcap's ``compute_score(gts, res) ->
(corpus_score, per_key_scores)`` can be passed as a scorer (tests use exact-match stand-ins).

- :func:`dvc_metrics`: ActivityNet's dense-captioning protocol (densevid_eval ``evaluate.py``): for each tIoU in
  {0.3, 0.5, 0.7, 0.9}, every prediction is paired with every ground-truth event it overlaps at >= tIoU (an unmatched
  prediction is paired with a nonsense reference, so it scores ~0); each video's pairs are scored as one corpus;
  scores are averaged over ground-truth videos (a video with no prediction scores 0), then over tIoUs. Also
  precision/recall of the segments at each tIoU.
- :func:`soda_c`: SODA_c (Fujita et al., ECCV 2020): ordered max-sum alignment (dynamic programming) of predictions
  to ground-truth events with pair score ``IoU * METEOR``; F1 of ``sum / |pred|`` and ``sum / |gt|``.
- :func:`grounding_metrics`: mean IoU and R1@{0.3, 0.5, 0.7}.

Tokenisation: captions are lower-cased and split on non-alphanumerics (:func:`tokenize_caption`), which is what
PTBTokenizer's punctuation removal yields for plain captions; it avoids a CoreNLP Java start per evaluation.
"""

from __future__ import annotations

import re

import numpy as np

from dvr1.rl.rewards import temporal_iou

TIOUS = (0.3, 0.5, 0.7, 0.9)
R1_THRESHOLDS = (0.3, 0.5, 0.7)
NO_MATCH = "abc123 xyz789"  # densevid_eval pairs an unmatched prediction with a random string; this is fixed


def tokenize_caption(text: str) -> str:
    """Lower-case, keep alphanumeric runs (and apostrophes inside words), join with single spaces."""
    return " ".join(re.findall(r"[a-z0-9]+(?:'[a-z]+)?", text.lower()))


def segment_iou(a, b) -> float:
    """IoU of two ``(start, end)`` segments (any unit)."""
    return temporal_iou([tuple(a)], [tuple(b)])


def default_scorers(meteor: bool = True) -> dict:
    """``{"METEOR": Meteor(), "CIDEr": Cider()}`` from pycocoevalcap (METEOR starts a Java process; ``meteor=False``
    leaves it out). Raises ImportError naming the package when pycocoevalcap is missing."""
    try:
        from pycocoevalcap.cider.cider import Cider
        from pycocoevalcap.meteor.meteor import Meteor
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError("dvr1.vidchain.metrics needs pycocoevalcap (pip install pycocoevalcap; METEOR needs java)"
                          ) from e
    out = {"CIDEr": Cider()}
    if meteor:
        out = {"METEOR": Meteor(), **out}
    return out


def pair_scores(scorer, refs: list[str], hyps: list[str]) -> list[float]:
    """Per-pair scores of ``hyps[i]`` against ``refs[i]`` with a pycocoevalcap scorer (one call)."""
    if not refs:
        return []
    gts = {i: [tokenize_caption(r) or NO_MATCH] for i, r in enumerate(refs)}
    res = {i: [tokenize_caption(h) or "empty"] for i, h in enumerate(hyps)}
    _, per = scorer.compute_score(gts, res)
    return [float(x) for x in np.asarray(per, dtype=np.float64).reshape(-1)]


def dvc_metrics(preds: dict, gts: dict, scorers: dict, tious=TIOUS) -> dict:
    """Dense-captioning scores (module docstring), in [0, 1] units as pycocoevalcap returns them.

    Args:
        preds: video id -> list of ``((start, end), caption)`` (any time unit, the same as ``gts``).
        gts: video id -> ``(events [(start, end), ...], captions [...])``.
        scorers: name -> pycocoevalcap-style scorer (e.g. :func:`default_scorers`).
        tious: tIoU thresholds.
    Returns:
        ``{f"{name}@{tiou}"}`` and ``{name}`` (mean over tIoUs) for each scorer, plus ``Precision@t``, ``Recall@t``,
        ``Precision``, ``Recall``.
    """
    out: dict[str, float] = {}
    vids = list(gts)
    for t in tious:
        pairs = {v: ([], []) for v in vids}  # refs, hyps
        prec, rec = [], []
        for v in vids:
            g_ev, g_cap = gts[v]
            p = preds.get(v, [])
            hit_gt = [False] * len(g_ev)
            n_hit_pred = 0
            for seg, cap in p:
                added = False
                for j, gseg in enumerate(g_ev):
                    if segment_iou(seg, gseg) >= t:
                        pairs[v][0].append(g_cap[j])
                        pairs[v][1].append(cap)
                        added = hit_gt[j] = True
                if not added:
                    pairs[v][0].append(NO_MATCH)
                    pairs[v][1].append(cap)
                n_hit_pred += added
            prec.append(n_hit_pred / len(p) if p else 0.0)
            rec.append(sum(hit_gt) / len(g_ev) if g_ev else 0.0)
        out[f"Precision@{t}"] = float(np.mean(prec)) if prec else 0.0
        out[f"Recall@{t}"] = float(np.mean(rec)) if rec else 0.0
        for name, scorer in scorers.items():
            per_video = []
            for v in vids:
                refs, hyps = pairs[v]
                if not refs:
                    per_video.append(0.0)
                    continue
                gts_d = {i: [tokenize_caption(r) or NO_MATCH] for i, r in enumerate(refs)}
                res_d = {i: [tokenize_caption(h) or "empty"] for i, h in enumerate(hyps)}
                per_video.append(float(scorer.compute_score(gts_d, res_d)[0]))
            out[f"{name}@{t}"] = float(np.mean(per_video)) if per_video else 0.0
    for key in list(scorers) + ["Precision", "Recall"]:
        out[key] = float(np.mean([out[f"{key}@{t}"] for t in tious]))
    return out


def ordered_max_alignment(scores: np.ndarray) -> float:
    """Max total score of an order-preserving one-to-one alignment of rows to columns (SODA's DP):
    ``D[i, j] = max(D[i-1, j], D[i, j-1], D[i-1, j-1] + scores[i, j])``, ``D[-1, :] = D[:, -1] = 0``.
    ``scores``: float ``[M, N]`` (non-negative)."""
    m, n = scores.shape
    d = np.zeros((m + 1, n + 1))
    for i in range(m):
        for j in range(n):
            d[i + 1, j + 1] = max(d[i, j + 1], d[i + 1, j], d[i, j] + scores[i, j])
    return float(d[m, n])


def _f1(total: float, n_pred: int, n_gt: int) -> float:
    if n_pred == 0 or n_gt == 0 or total <= 0:
        return 0.0
    p, r = total / n_pred, total / n_gt
    return 2 * p * r / (p + r)


def soda_c(pred_segs, pred_caps, gt_segs, gt_caps, meteor) -> float:
    """SODA_c of one video (Fujita et al. 2020): ordered alignment maximising ``sum IoU(p_i, g_j) *
    METEOR(c_i, c_j)``; returns the F1 of precision ``sum / |pred|`` and recall ``sum / |gt|`` (0 without preds).

    ``meteor``: a pycocoevalcap-style scorer used per pair (segment-level scores)."""
    if not pred_segs or not gt_segs:
        return 0.0
    m, n = len(gt_segs), len(pred_segs)
    iou = np.array([[segment_iou(p, g) for p in pred_segs] for g in gt_segs])
    refs = [gt_caps[i] for i in range(m) for _ in range(n)]
    hyps = [pred_caps[j] for _ in range(m) for j in range(n)]
    met = np.array(pair_scores(meteor, refs, hyps)).reshape(m, n)
    return _f1(ordered_max_alignment(iou * met), n, m)


def grounding_metrics(preds: list, gts: list, thresholds=R1_THRESHOLDS) -> dict:
    """Temporal grounding: ``mIoU`` and ``R1@t`` (fraction of queries whose top-1 segment has IoU >= t).

    Args:
        preds: per query, ``(start, end)`` or None (unparseable answer: IoU 0).
        gts: per query, ``(start, end)``.
    Raises: ValueError if the lists differ in length or are empty.
    """
    if len(preds) != len(gts) or not gts:
        raise ValueError(f"grounding_metrics: {len(preds)} predictions for {len(gts)} queries")
    ious = np.array([0.0 if p is None else segment_iou(p, g) for p, g in zip(preds, gts)])
    out = {"mIoU": float(ious.mean())}
    for t in thresholds:
        out[f"R1@{t}"] = float((ious >= t).mean())
    return out


# ---- per-step metrics of the chain (M-DPO scoring, 0-100 scale; ALGORITHMS §7) -------------------------------

def count_score(pred: int | None, gt: int) -> float:
    """``100 * max(0, 1 - |pred - gt| / gt)``; 0 when the answer did not parse."""
    if pred is None:
        return 0.0
    return 100.0 * max(0.0, 1.0 - abs(pred - gt) / gt)


def segments_score(pred, gt) -> float:
    """``100 * F1`` of SODA's ordered alignment with pair score = IoU (temporal part of SODA); 0 if unparsed.
    For one ground-truth event and one prediction this is ``100 * IoU``."""
    if not pred:
        return 0.0
    iou = np.array([[segment_iou(p, g) for p in pred] for g in gt])
    return 100.0 * _f1(ordered_max_alignment(iou), len(pred), len(gt))


def captions_score(pred: list[str] | None, gt: list[str], meteor) -> float:
    """Caption step with the ground-truth segments swapped in: caption i is scored against ground-truth caption i
    (segment-level METEOR) and ``100 * F1(sum / |pred|, sum / |gt|)`` is returned. This is SODA_c with the
    predicted segments equal to the (non-overlapping) ground truth, where IoU is 1 on the diagonal, 0 elsewhere."""
    if not pred:
        return 0.0
    k = min(len(pred), len(gt))
    total = sum(pair_scores(meteor, gt[:k], pred[:k]))
    return 100.0 * _f1(total, len(pred), len(gt))
