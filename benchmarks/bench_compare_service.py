"""Benchmark: Compare's cold and cached requests on a workspace, through the service call the tab
makes (``Services.compare.compare`` in ``dashboard.services``), every method of the model.

Baseline: the cold request of the same image in the same run (forward + every scorer and head +
metrics + rendering); the cached request (same image again, maps from the app's cache) is
printed as a ratio to it. The first image also pays the model load and is reported apart.

    python benchmarks/bench_compare_service.py --workspace DIR/workspace [--model erfnet] [--images 3]
"""

from __future__ import annotations

import argparse
import os
import time


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workspace", required=True)
    ap.add_argument("--model", default="erfnet")
    ap.add_argument("--images", type=int, default=3, help="images timed after the first")
    args = ap.parse_args()

    from sqlalchemy import select

    from dashboard.services import Services
    from db.models import Dataset, Image
    from workbench.workspace import Workspace

    ws = Workspace.open(args.workspace)
    svc = Services(ws)
    with ws.store.read() as s:
        ids = list(
            s.scalars(
                select(Image.id)
                .join(Dataset, Image.dataset_id == Dataset.id)
                .where(Dataset.role == "eval")
                .order_by(Image.id)
            )
        )[: args.images + 1]
    methods = svc.scores.default_methods(args.model)
    print(f"model {args.model} · {len(methods)} methods: {', '.join(methods)}")
    t0 = time.perf_counter()
    svc.compare.compare(args.model, ids[0], methods)
    print(f"first request (model load + forward + every method): {time.perf_counter() - t0:.2f} s")
    for i in ids[1:]:
        t0 = time.perf_counter()
        svc.compare.compare(args.model, i, methods)
        cold = time.perf_counter() - t0
        t0 = time.perf_counter()
        svc.compare.compare(args.model, i, methods)
        cached = time.perf_counter() - t0
        print(f"image {i}: cold {cold:.2f} s · cached {cached:.3f} s · cached/cold "
              f"{cached / cold:.3f} · 1-min load {os.getloadavg()[0]:.1f}")  # fmt: skip
    ws.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
