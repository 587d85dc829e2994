"""What a method's scores are measured in: the unit on its colour bar and the scale it may share.

"One shared colour scale" only makes sense between maps in the same units: energy (about
-12 … -2) beside entropy (0 … 1) on one range turns entropy into one flat colour. Methods that
share a ``kind`` share a range; every other method keeps its own.
"""

from __future__ import annotations

from dataclasses import dataclass

from anomseg.head_methods import is_head_method
from anomseg.registry import Registry


@dataclass(frozen=True)
class Scale:
    """The unit a method's scores are in (colour-bar text) and its sharing group."""

    unit: str
    kind: str


SCALES: Registry[Scale] = Registry("method scale")

# the two scores in logit units (-max logit, -T·logsumexp(logits/T)) are comparable
_LOGIT = "logit"
_PROB = "probability"

for _name, _scale in (
    ("msp", Scale("1 − max softmax prob.", _PROB)),
    ("stat_one_minus_max", Scale("1 − max prob.", _PROB)),
    ("stat_max_prob", Scale("−max prob. (negated)", "neg-probability")),
    ("maxlogit", Scale("−max logit (logit units)", _LOGIT)),
    ("energy", Scale("−T·logsumexp (logit units)", _LOGIT)),
    ("entropy", Scale("entropy / log C (0–1)", "normalised-entropy")),
    ("stat_entropy", Scale("entropy (nats)", "entropy-nats")),
    ("stat_sum_prob", Scale("sum of probabilities", "sum-prob")),
    ("rba", Scale("−Σ tanh(class score)", "rba")),
):
    SCALES.register(_name, _scale)

HEAD_SCALE = Scale("anomaly probability (sigmoid)", "head-probability")


def scale_of(name: str) -> Scale:
    """The scale of a method name (``msp``, ``head:3``); an unknown method gets its own group."""
    if is_head_method(name):
        return HEAD_SCALE
    if name in SCALES:
        return SCALES.get(name)
    return Scale("score", f"own:{name}")
