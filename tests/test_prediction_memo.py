"""The scoring memo lives on the Prediction (not in its meta), is bounded, and the byte-bounded
prediction cache is charged for it when the prediction is stored."""

from __future__ import annotations

import numpy as np
import torch

from anomseg import scoring
from anomseg.prediction import MEMO_MAPS, Prediction
from anomseg.predict import PredictionCache

H, W, C = 24, 40, 20


def _pred(seed: int = 0) -> Prediction:
    g = torch.Generator().manual_seed(seed)
    return Prediction(logits=torch.randn(C, H, W, generator=g) * 3)


def _memo_maps(p: Prediction) -> int:
    return sum(-(-t.numel() // (H * W)) for t in p._memo.values())


def test_memoised_scores_equal_fresh_ones_and_meta_stays_clean():
    p = _pred(1)
    names = ["msp", "maxlogit", "entropy", "energy"]
    memoised = {n: scoring.score(n, p) for n in names}
    stats = scoring.uncertainty_stats(p)
    assert p.meta == {} and len(p._memo) >= 2  # amax / lse / stats are on the prediction
    for n in names:
        fresh = _pred(1)
        fresh.memo = lambda key, fn: fn()  # no memo at all
        np.testing.assert_array_equal(memoised[n], scoring.score(n, fresh), err_msg=n)
    # the independent definitions: max logit and the head statistics' max probability
    np.testing.assert_allclose(memoised["maxlogit"], -p.logits.amax(0).numpy(), rtol=1e-6)
    np.testing.assert_allclose(stats[0], torch.softmax(p.logits, 0).amax(0), rtol=1e-5)


def test_memo_is_bounded_and_charged_up_front():
    p = _pred(2)
    tensors = p.logits.element_size() * p.logits.nelement()
    assert p.nbytes() == tensors + MEMO_MAPS * H * W * 4 == tensors + p.memo_nbytes()
    cache = PredictionCache(max_bytes=10 * p.nbytes())
    cache.put("k", p)
    charged = cache.nbytes
    scoring.uncertainty_stats(p)
    for t in np.linspace(0.5, 20, 40):  # a temperature slider dragged across its range
        scoring.score("energy", p, T=float(t))
        scoring.score("msp", p, T=float(t))
        assert _memo_maps(p) <= MEMO_MAPS
        held = sum(v.element_size() * v.nelement() for v in p._memo.values())
        assert held <= p.memo_nbytes()
    assert cache.nbytes == charged  # what was charged at put time covers everything held


def test_moving_a_prediction_does_not_share_its_memo():
    p = _pred(3)
    scoring.score("maxlogit", p)
    q = p.to("cpu")
    assert q._memo == {} and q._memo is not p._memo
    np.testing.assert_array_equal(scoring.score("maxlogit", q), scoring.score("maxlogit", p))
