"""Decision support for the leaderboard (pure: a results frame in, a ranked frame out).

A table of numbers does not say which method is best. Within each dataset the rows get a rank
by AuPRC (1 = best) and a "best in dataset" column naming every metric on which the row is the
best (highest, or lowest for FPR95; ties share it). The internal result id, which the drill-down
needs, moves to the last column.
"""

from __future__ import annotations

import pandas as pd

METRICS = ("AuPRC", "FPR95", "AUROC", "sIoU", "PPV", "F1", "mIoU")
LOWER_IS_BETTER = frozenset({"FPR95"})
RANK_BY = "AuPRC"


def rank_and_mark(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` (one row per model x method x dataset) with ``rank`` and ``best in dataset``."""
    out = df.copy()
    if out.empty or "dataset" not in out.columns:
        for col in ("best in dataset", "rank"):
            if col not in out.columns:
                out.insert(0, col, pd.Series(dtype="object"))
        return out
    metrics = [m for m in METRICS if m in out.columns]
    best = pd.Series([[] for _ in range(len(out))], index=out.index, dtype="object")
    for metric in metrics:
        vals = pd.to_numeric(out[metric], errors="coerce")
        target = (
            vals.groupby(out["dataset"]).transform("min")
            if metric in LOWER_IS_BETTER
            else vals.groupby(out["dataset"]).transform("max")
        )
        for i in out.index[(vals == target) & vals.notna()]:
            best[i] = [*best[i], metric]
    if RANK_BY in out.columns:
        score = pd.to_numeric(out[RANK_BY], errors="coerce")
        rank = score.groupby(out["dataset"]).rank(ascending=False, method="min")
        out.insert(0, "rank", rank.astype("Int64"))
    out.insert(1 if "rank" in out.columns else 0, "best in dataset",
               best.map(lambda ms: "★ " + ", ".join(ms) if ms else ""))  # fmt: skip
    order = ["dataset", "rank"] if "rank" in out.columns else ["dataset"]
    out = out.sort_values(order, kind="stable", na_position="last").reset_index(drop=True)
    if "result" in out.columns:
        out = out[[c for c in out.columns if c != "result"] + ["result"]]
    return out
