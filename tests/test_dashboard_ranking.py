"""Leaderboard ranking and best-marking, against a brute-force loop over the rows."""

from __future__ import annotations

import numpy as np
import pandas as pd

from dashboard.ranking import rank_and_mark


def _frame():
    rng = np.random.default_rng(3)
    rows = []
    for ds in ("RoadAnomaly21", "fs_static"):
        for i, method in enumerate(["msp", "maxlogit", "entropy", "energy", "head:1"]):
            rows.append(
                {
                    "model": "erfnet",
                    "method": method,
                    "dataset": ds,
                    "AuPRC": round(float(rng.uniform(5, 60)), 2),
                    "FPR95": round(float(rng.uniform(10, 90)), 2),
                    "AUROC": None if i == 4 else round(float(rng.uniform(70, 99)), 2),
                    "result": 100 + len(rows),
                }
            )
    rows[1]["AuPRC"] = rows[3]["AuPRC"] = 99.0  # a tie for best AuPRC on RoadAnomaly21
    return pd.DataFrame(rows)


def test_rank_and_best_marks_match_a_brute_force_loop():
    df = _frame()
    out = rank_and_mark(df)
    assert list(out.columns[:2]) == ["rank", "best in dataset"]
    assert out.columns[-1] == "result"  # the internal id moves out of the way
    for _, r in out.iterrows():
        same = df[df["dataset"] == r["dataset"]]
        # rank: 1 + number of rows of the dataset with a strictly higher AuPRC
        assert r["rank"] == 1 + int((same["AuPRC"] > r["AuPRC"]).sum())
        want = []
        for metric, better in (("AuPRC", max), ("FPR95", min), ("AUROC", max)):
            vals = [v for v in same[metric] if v is not None and not pd.isna(v)]
            if not pd.isna(r[metric]) and vals and r[metric] == better(vals):
                want.append(metric)
        assert r["best in dataset"] == ("★ " + ", ".join(want) if want else "")
    tied = out[(out["dataset"] == "RoadAnomaly21") & (out["rank"] == 1)]
    assert len(tied) == 2 and all("AuPRC" in b for b in tied["best in dataset"])
    # rows grouped by dataset, best first
    for _ds, g in out.groupby("dataset", sort=False):
        assert list(g["rank"]) == sorted(g["rank"])


def test_an_empty_board_keeps_its_columns():
    out = rank_and_mark(pd.DataFrame(columns=["model", "method", "dataset", "AuPRC", "result"]))
    assert {"rank", "best in dataset"} <= set(out.columns) and out.empty
