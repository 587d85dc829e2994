"""Scorers vs brute-force per-pixel numpy loops; parameter validation; method strings; families."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from anomseg import scoring
from anomseg.errors import InputError
from anomseg.prediction import Prediction

C, H, W, Q = 5, 7, 9, 6


def _pixel_pred(seed: int = 0, scale: float = 3.0) -> Prediction:
    g = torch.Generator().manual_seed(seed)
    return Prediction(logits=torch.randn(C, H, W, generator=g) * scale, num_classes=C)


def _mask_pred(seed: int = 0) -> Prediction:
    """An EoMT-like prediction: class scores and per-pixel class logits from masks x classes."""
    g = torch.Generator().manual_seed(seed)
    mask_logits = torch.randn(Q, H, W, generator=g) * 3
    class_logits = torch.randn(Q, C + 1, generator=g) * 2
    scores = torch.einsum("qhw,qc->chw", mask_logits.sigmoid(), class_logits.softmax(-1)[:, :-1])
    pcl = torch.einsum("qhw,qc->chw", mask_logits.sigmoid(), class_logits[:, :-1])
    return Prediction(
        logits=scores,
        num_classes=C,
        pixel_class_logits=pcl,
        mask_logits=mask_logits,
        class_logits=class_logits,
    )


def _pixels(pred: Prediction):
    z = pred.logits.double().numpy()
    for i in range(z.shape[1]):
        for j in range(z.shape[2]):
            yield i, j, z[:, i, j]


def _softmax(v: np.ndarray) -> np.ndarray:
    e = np.exp(v - v.max())
    return e / e.sum()


def _brute(pred: Prediction, fn) -> np.ndarray:
    out = np.zeros(pred.size)
    for i, j, z in _pixels(pred):
        out[i, j] = fn(z, i, j)
    return out


def _mask_probs_loop(pred: Prediction, i: int, j: int) -> np.ndarray:
    """Class scores of one pixel computed from masks and classes, query by query."""
    m = pred.mask_logits.double().numpy()[:, i, j]
    cl = pred.class_logits.double().numpy()
    p = np.zeros(C)
    for q in range(Q):
        p += 1 / (1 + math.exp(-m[q])) * _softmax(cl[q])[:C]
    return p


def _plogp(p: np.ndarray) -> float:
    return float(sum(x * math.log(x) for x in p if x > 0))


@pytest.mark.parametrize("T", [1.0, 0.5, 2.0, 10.0])
def test_msp_and_energy_with_temperature(T):
    pred = _pixel_pred(1)
    msp = scoring.score("msp", pred, T=T)
    energy = scoring.score("energy", pred, T=T)
    assert msp.dtype == np.float32 and msp.shape == (H, W)
    ref_msp = _brute(pred, lambda z, i, j: 1 - _softmax(z / T).max())
    ref_energy = _brute(
        pred, lambda z, i, j: -T * (z.max() / T + math.log(np.exp((z - z.max()) / T).sum()))
    )
    np.testing.assert_allclose(msp, ref_msp, atol=2e-6)
    np.testing.assert_allclose(energy, ref_energy, rtol=1e-5, atol=1e-5)


def test_temperature_changes_msp_towards_uniform():
    pred = _pixel_pred(2)
    cold, warm, hot = (scoring.score("msp", pred, T=t) for t in (0.5, 1.0, 100.0))
    # higher T flattens the softmax: the max probability drops, the score rises, towards 1 - 1/C
    assert (cold <= warm + 1e-6).all() and (warm <= hot + 1e-6).all()
    np.testing.assert_allclose(hot, 1 - 1 / C, atol=0.02)


def test_maxlogit_entropy_rba_match_loops():
    pred = _mask_pred(3)
    np.testing.assert_allclose(
        scoring.score("maxlogit", pred), _brute(pred, lambda z, i, j: -z.max()), atol=1e-6
    )
    np.testing.assert_allclose(
        scoring.score("entropy", pred),
        _brute(pred, lambda z, i, j: -_plogp(_softmax(z)) / math.log(C)),
        atol=1e-6,
    )
    m = pred.mask_logits.double().numpy()
    cl = pred.class_logits.double().numpy()

    def rba(z, i, j):
        # the original RbA: class scores with the softmax over all C + 1 columns, void dropped
        s = sum(1 / (1 + math.exp(-m[q, i, j])) * _softmax(cl[q])[:C] for q in range(Q))
        return -sum(math.tanh(v) for v in s)

    np.testing.assert_allclose(scoring.score("rba", pred), _brute(pred, rba), atol=1e-5)


def test_stats_pixel_model_use_softmax():
    pred = _pixel_pred(4)
    stats = scoring.uncertainty_stats(pred)
    assert stats.shape == (4, H, W) and stats.dtype == torch.float32
    refs = [
        _brute(pred, lambda z, i, j: _softmax(z).max()),
        _brute(pred, lambda z, i, j: -_plogp(_softmax(z))),
        _brute(pred, lambda z, i, j: _softmax(z).sum()),
        _brute(pred, lambda z, i, j: 1 - _softmax(z).max()),
    ]
    names = ["stat_max_prob", "stat_entropy", "stat_sum_prob", "stat_one_minus_max"]
    for k, (name, ref) in enumerate(zip(names, refs, strict=True)):
        np.testing.assert_allclose(stats[k].numpy(), ref, atol=2e-6, err_msg=name)
        np.testing.assert_allclose(scoring.score(name, pred), ref, atol=2e-6, err_msg=name)
    np.testing.assert_allclose(scoring.score("stat_sum_prob", pred), 1.0, atol=1e-6)


def test_stats_mask_model_use_class_scores_not_softmax():
    pred = _mask_pred(5)
    stats = scoring.uncertainty_stats(pred).numpy()
    ref = np.zeros((4, H, W))
    for i in range(H):
        for j in range(W):
            p = _mask_probs_loop(pred, i, j)
            ref[:, i, j] = [p.max(), -_plogp(p), p.sum(), 1 - p.max()]
    np.testing.assert_allclose(stats, ref, atol=2e-6)
    assert np.abs(ref[2] - 1).max() > 0.05  # class scores do not sum to 1: the statistic differs


def test_stat_entropy_zero_probabilities_are_zero_terms():
    logits = torch.zeros(C, H, W)
    logits[0] = 1.0  # class scores exactly 0 elsewhere: 0 log 0 must count as 0, not NaN
    pred = Prediction(logits=logits, num_classes=C, pixel_class_logits=torch.zeros(C, H, W))
    np.testing.assert_array_equal(scoring.score("stat_entropy", pred), 0.0)
    np.testing.assert_array_equal(scoring.score("stat_max_prob", pred), 1.0)


def test_bf16_logits_give_float32_maps():
    pred = _pixel_pred(6)
    half = Prediction(logits=pred.logits.bfloat16(), num_classes=C)
    out = scoring.score("msp", half)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, scoring.score("msp", pred), atol=0.05)


@pytest.mark.parametrize(
    ("name", "params", "needle"),
    [
        ("msp", {"T": 0.0}, "[0.01, 100]"),
        ("msp", {"T": 1e3}, "[0.01, 100]"),
        ("energy", {"T": float("nan")}, "T="),
        ("msp", {"X": 1.0}, "unknown parameter 'X'"),
        ("maxlogit", {"T": 2.0}, "unknown parameter 'T'"),
        ("msp", {"T": "warm"}, "not a number"),
    ],
)
def test_parameter_validation(name, params, needle):
    with pytest.raises(InputError) as exc:
        scoring.score(name, _pixel_pred(), **params)
    assert needle in str(exc.value)


def test_unknown_scorer_and_missing_fields():
    with pytest.raises(InputError, match="unknown scoring method 'nope'.*msp"):
        scoring.score("nope", _pixel_pred())
    with pytest.raises(InputError, match="rba applies to mask models only"):
        scoring.score("rba", _pixel_pred())


def test_list_scorers_filters_by_prediction():
    all_names = {s.name for s in scoring.list_scorers()}
    assert {"msp", "maxlogit", "entropy", "energy", "rba"} <= all_names
    assert "rba" not in {s.name for s in scoring.list_scorers(_pixel_pred())}
    assert "rba" in {s.name for s in scoring.list_scorers(_mask_pred())}
    assert scoring.get_scorer("stat_max_prob").inverted
    assert scoring.get_scorer("msp").param("T").default == 1.0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("msp", ("msp", {})),
        ("msp:T=2.0", ("msp", {"T": 2.0})),
        (" energy:T=0.5 ", ("energy", {"T": 0.5})),
        ("msp:T=1e-1", ("msp", {"T": 0.1})),
    ],
)
def test_parse_method(text, expected):
    assert scoring.parse_method(text) == expected


@pytest.mark.parametrize("bad", ["", "msp:", "msp:T=", "msp:=2", "msp:T=abc", "nope", "msp:X=1"])
def test_parse_method_errors(bad):
    with pytest.raises(InputError):
        scoring.parse_method(bad)


def test_format_method_is_canonical_inverse():
    assert scoring.format_method("msp", {"T": 1.0}) == "msp"  # default dropped
    assert scoring.format_method("msp", {"T": 2}) == "msp:T=2.0"
    for text in ("msp:T=2.0", "energy:T=0.25", "maxlogit"):
        assert scoring.format_method(*scoring.parse_method(text)) == text


def test_family_and_extra_scorers(monkeypatch):
    def resolve(suffix: str) -> scoring.ScorerSpec:
        if suffix not in ("v1", "v2"):
            raise InputError(f"no head {suffix!r}")
        offset = float(suffix[1:])

        def fn(pred, gain=1.0):
            return gain * scoring.maxlogit(pred) + offset

        return scoring.ScorerSpec(
            f"testhead:{suffix}", fn, (scoring.Param("gain", 1.0, 0.0, 5.0),), needs=frozenset()
        )

    fam = scoring.ScorerFamily("testhead", resolve, lambda: ["v1", "v2"])
    monkeypatch.setitem(scoring.FAMILIES._entries, "testhead", fam)
    pred = _pixel_pred(7)
    base = scoring.score("maxlogit", pred)
    np.testing.assert_allclose(scoring.score("testhead:v2", pred, gain=2.0), 2 * base + 2)
    assert scoring.parse_method("testhead:v1:gain=3") == ("testhead:v1", {"gain": 3.0})
    assert {"testhead:v1", "testhead:v2"} <= {s.name for s in scoring.list_scorers(pred)}
    with pytest.raises(InputError, match=r"\[0, 5\]"):
        scoring.score("testhead:v1", pred, gain=9)
    extra = {"twice": scoring.ScorerSpec("twice", lambda p: 2 * scoring.maxlogit(p))}
    np.testing.assert_allclose(scoring.score("twice", pred, extra=extra), 2 * base)


def test_methods_cli_lists_parameters(capsys):
    from workbench.cli import main

    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    msp_line = next(line for line in out.splitlines() if line.startswith("msp "))
    assert "T=1 [0.01, 100]" in msp_line
    rba_line = next(line for line in out.splitlines() if line.startswith("rba "))
    assert "mask model" in rba_line


@pytest.mark.parametrize("mask_model", [False, True])
@pytest.mark.parametrize("hw", [(40, 64), (24, 1280)])
def test_block_wise_scores_equal_whole_map_textbook_bit_for_bit(monkeypatch, mask_model, hw):
    """Scorers reduce the logits in blocks; every value must be the one the whole-map textbook
    expression gives (a last-bit change reorders ties and moves AuPRC)."""
    g = torch.Generator().manual_seed(7)
    z = torch.randn(19, *hw, generator=g) * 4
    monkeypatch.setattr(scoring, "ROW_BLOCK_BYTES", 19 * 4 * 256 * 3)  # blocks of 768 pixels
    if mask_model:
        z = z.sigmoid()
        pcl = torch.randn(19, 37, 53, generator=g)
        pred = Prediction(z, pixel_class_logits=pcl)
        p = z.clamp_min(0.0)
        assert torch.equal(torch.from_numpy(scoring.rba(pred)), -torch.tanh(z).sum(0))
    else:
        pred = Prediction(z)
        p = torch.softmax(z, 0)
    lse = torch.logsumexp(z, 0)
    whole = {
        "msp": 1.0 - torch.softmax(z, 0).amax(0),
        "energy": -lse,
        "entropy": (lse - (torch.exp(z - lse) * z).sum(0)).clamp_min(0) / math.log(19),
        "stat_max_prob": p.amax(0),
        "stat_entropy": -torch.special.xlogy(p, p).sum(0),
        "stat_sum_prob": p.sum(0),
        "stat_one_minus_max": 1.0 - p.amax(0),
    }
    for name, ref in whole.items():
        got = torch.from_numpy(scoring.score(name, pred))
        assert torch.equal(got, ref), name
    stats = scoring.uncertainty_stats(pred)
    assert torch.equal(
        stats, torch.stack([p.amax(0), whole["stat_entropy"], p.sum(0), 1 - p.amax(0)])
    )
