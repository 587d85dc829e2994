"""The Retrain tab's "improves" rule reads both figures a researcher reads: AuPRC and FPR95."""

from __future__ import annotations

import pytest

from training.trainer import ACTIVATION_RULES

RULE = ACTIVATION_RULES.get("auprc_and_fpr95_improve")


@pytest.mark.parametrize(
    "new, old, expect",
    [
        # the case: AuPRC up, FPR95 from 10.4 % to 41.0 %: not activated
        ({"eval_mean_auprc": 0.42, "eval_mean_fpr95": 0.410}, {"eval_mean_auprc": 0.40,
         "eval_mean_fpr95": 0.104}, False),  # fmt: skip
        ({"eval_mean_auprc": 0.42, "eval_mean_fpr95": 0.09}, {"eval_mean_auprc": 0.40,
         "eval_mean_fpr95": 0.104}, True),  # fmt: skip
        ({"eval_mean_auprc": 0.42, "eval_mean_fpr95": 0.104}, {"eval_mean_auprc": 0.40,
         "eval_mean_fpr95": 0.104}, True),  # fmt: skip
        ({"eval_mean_auprc": 0.39, "eval_mean_fpr95": 0.05}, {"eval_mean_auprc": 0.40,
         "eval_mean_fpr95": 0.104}, False),  # fmt: skip
        ({"eval_mean_auprc": 0.3, "eval_mean_fpr95": 0.5}, None, True),  # no active head yet
        ({"eval_mean_auprc": None}, None, False),  # nothing evaluated: never activated
    ],
)
def test_activation_needs_better_auprc_and_no_worse_fpr95(new, old, expect):
    assert RULE(new, old) is expect


def test_the_retrain_tab_offers_the_rule():
    from dashboard.retrain import ACTIVATION

    assert "auprc_and_fpr95_improve" in [v for _label, v in ACTIVATION]
