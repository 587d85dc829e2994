"""The scoring memo lives on the Prediction (not in its meta), is bounded, and the byte-bounded
prediction cache counts it: a held prediction whose memo grows is re-measured (and evicts)."""

from __future__ import annotations

import pickle

import numpy as np
import torch

from anomseg import scoring
from anomseg.predict import PredictionCache
from anomseg.prediction import MEMO_MAPS, Prediction

H, W, C = 24, 40, 20
MAP = H * W * 4  # bytes of one (H, W) float32 map


def _pred(seed: int = 0) -> Prediction:
    g = torch.Generator().manual_seed(seed)
    return Prediction(logits=torch.randn(C, H, W, generator=g) * 3)


def _tensor_bytes(p: Prediction) -> int:
    return p.logits.element_size() * p.logits.nelement()


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


def test_the_cache_counts_the_memo_as_it_grows_and_it_stays_bounded():
    p = _pred(2)
    cache = PredictionCache(max_bytes=100 * _tensor_bytes(p))
    cache.put("k", p)
    assert cache.nbytes == _tensor_bytes(p) == p.nbytes()  # nothing memoised yet
    scoring.score("maxlogit", p)  # amax: one map
    assert cache.nbytes == _tensor_bytes(p) + MAP == p.nbytes()
    scoring.uncertainty_stats(p)  # + 4 maps
    assert cache.nbytes == _tensor_bytes(p) + 5 * MAP
    for t in np.linspace(0.5, 20, 30):  # a temperature slider dragged across its range
        scoring.score("energy", p, T=float(t))
        assert p.memo_nbytes() <= MEMO_MAPS * MAP
        assert cache.nbytes == p.nbytes() == _tensor_bytes(p) + p.memo_nbytes()


def test_a_growing_memo_evicts_older_predictions():
    a, b = _pred(3), _pred(4)
    room = 2 * _tensor_bytes(a) + 2 * MAP  # both fit, with two maps to spare
    cache = PredictionCache(max_bytes=room)
    cache.put("a", a)
    cache.put("b", b)
    scoring.score("maxlogit", b)
    assert len(cache) == 2
    scoring.uncertainty_stats(b)  # 4 more maps: over the bound, the older entry goes
    assert cache.get("a") is None and cache.get("b") is b
    assert cache.nbytes == b.nbytes() <= room


def test_moving_or_pickling_a_prediction_does_not_share_its_memo_or_cache():
    p = _pred(5)
    PredictionCache().put("k", p)
    scoring.score("maxlogit", p)
    for q in (p.to("cpu"), pickle.loads(pickle.dumps(p))):
        assert q._memo == {} and q.on_resize is None
        np.testing.assert_array_equal(scoring.score("maxlogit", q), scoring.score("maxlogit", p))
