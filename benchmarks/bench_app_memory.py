"""Benchmark: the app's memory with the real ERFNet at 512x1024 on the two real eval sets.

One process plays the server: the dashboard is built (``dashboard.app.build_app``, no port
opened), a session goes through the services the tabs call — Compare of ``--images`` images of
each dataset x every method, the full-size view, the 95%-TPR thresholds of one dataset — and then
an evaluation of both datasets runs as the app runs it (``workbench.jobs.enqueue_evaluate``, the
in-process worker's ``run_once``). Resident memory (``VmRSS``) is printed at start, after the
model load, after the Compare session and after the evaluation; the peak (``VmHWM``) of the
session and of the evaluation alone (the peak is reset between them through
``/proc/self/clear_refs``).

Baseline, same run: the caches' byte budgets (``anomseg.settings.prediction_cache_bytes`` /
``map_cache_bytes``, env ``ANOMSEG_PREDICTION_CACHE_MB`` / ``ANOMSEG_MAP_CACHE_MB``) against the
bytes they hold, and the RSS growth of the session against those bytes: what the caches do not
account for is the model, the allocator and transient buffers. The last line is the RSS after
``malloc_trim(0)``: freed memory the C allocator had kept rather than returned.

    python benchmarks/bench_app_memory.py [--shared ../shared] [--images 4] [--workspace DIR]

Without ``--workspace`` a fresh workspace is made in a temporary folder with ``erfnet``
(``models/erfnet_cityscapes.pth`` at 512x1024), RoadAnomaly21 and fs_static registered as
``anomseg add-model`` / ``anomseg add-dataset`` register them.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

MB = 1 << 20


def _status(field: str) -> int:
    """A ``/proc/self/status`` memory field in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def rss() -> int:
    return _status("VmRSS")


def peak() -> int:
    return _status("VmHWM")


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def register(root: Path, shared: Path) -> None:
    """The workspace ``anomseg add-model`` / ``add-dataset`` would make from ../shared."""
    from workbench.workspace import Workspace

    ws = Workspace.open(root)
    ws.register_checkpoint(
        "erfnet",
        "erfnet",
        shared / "models/erfnet_cityscapes.pth",
        input_size=(512, 1024),
        options={"input_size": [512, 1024]},
    )
    for name in ("RoadAnomaly21", "fs_static"):
        ws.register_benchmark(name, shared / "data/anomaly_val" / name, role="eval")
    ws.close()


def cache_report(svc) -> list[tuple[str, int, int]]:
    """(cache, bytes held, byte budget) of every bounded cache the session filled."""
    pool = svc.context.ws._predictors
    info = pool.cache.info()
    out = [(f"predictions ({len(pool._predictors)} model(s))", info["bytes"], info["max_bytes"])]
    info = svc.context.maps.info()
    out.append(("scored maps", info["bytes"], info["max_bytes"]))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", default=str(Path(__file__).resolve().parents[2] / "shared"))
    ap.add_argument("--images", type=int, default=4, help="Compare images per dataset")
    ap.add_argument("--workspace", default=None, help="a workspace with 'erfnet' + eval sets")
    ap.add_argument("--model", default="erfnet")
    args = ap.parse_args()

    t_start = time.perf_counter()
    marks: list[tuple[str, int]] = [("interpreter", rss())]
    from dashboard.app import build_app
    from dashboard.services import Services
    from db import catalog
    from workbench.jobs import enqueue_evaluate
    from workbench.worker import Worker
    from workbench.workspace import Workspace

    tmp = None
    if args.workspace is None:
        tmp = tempfile.TemporaryDirectory(prefix="anomseg-bench-mem-")
        root = Path(tmp.name) / "workspace"
        register(root, Path(args.shared))
    else:
        root = Path(args.workspace)
    ws = Workspace.open(root)
    svc = Services(ws)
    build_app(ws, svc)
    marks.append(("start (app built, no model loaded)", rss()))

    with ws.store.read() as s:
        sets = [(d.id, d.name) for d in catalog.list_datasets(s, role="eval")]
    methods = svc.scores.default_methods(args.model)
    print(f"model {args.model} · methods {', '.join(methods)} · datasets "
          f"{', '.join(n for _, n in sets)}")  # fmt: skip
    svc.compare.compare(args.model, svc.catalog.image_names(sets[0][0])[0][1], methods)
    marks.append(("model loaded + first Compare", rss()))

    reset_peak()
    t0 = time.perf_counter()
    n_cmp = 0
    for ds_id, _name in sets:
        for _fname, image_id in svc.catalog.image_names(ds_id)[: args.images]:
            res = svc.compare.compare(args.model, image_id, methods)
            svc.compare.full_view(args.model, image_id, methods[0])
            n_cmp += 1
            del res
    svc.compare.dataset_thresholds(args.model, methods, None, sets[0][0])
    marks.append((f"after Compare session ({n_cmp} images x {len(methods)} methods, "
                  f"95% TPR on {sets[0][1]})", rss()))  # fmt: skip
    session_peak = peak()
    t_cmp = time.perf_counter() - t0

    reset_peak()
    t0 = time.perf_counter()
    job = enqueue_evaluate(ws.store, args.model)
    worker = Worker(ws.store, ws.root, poll_s=0.1)
    ran = worker.run_once()
    t_eval = time.perf_counter() - t0
    state = svc.jobs.job_state(job)
    if ran != job or state.status != "done":
        raise SystemExit(f"evaluate job #{job} ended {state.status}: {state.error}")
    marks.append(("after evaluation of every eval set", rss()))
    eval_peak = peak()

    for label, value in marks:
        print(f"RSS {label}: {value / MB:,.0f} MB")
    print(f"peak during the Compare session: {session_peak / MB:,.0f} MB ({t_cmp:.0f} s)")
    print(f"peak during the evaluation ({len(sets)} datasets): {eval_peak / MB:,.0f} MB "
          f"({t_eval:.0f} s)")  # fmt: skip
    held = 0
    for name, nbytes, budget in cache_report(svc):
        held += nbytes
        print(f"  {name}: holds {nbytes / MB:,.0f} MB of a {budget / MB:,.0f} MB budget")
    growth = marks[-1][1] - marks[1][1]
    print(f"RSS growth start -> end {growth / MB:,.0f} MB; caches hold {held / MB:,.0f} MB "
          f"(ratio growth/held {growth / max(held, 1):.2f}); total {time.perf_counter() - t_start:.0f} s")  # fmt: skip
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
        print(f"RSS after malloc_trim(0): {rss() / MB:,.0f} MB")
    except (OSError, AttributeError):
        pass
    ws.close()
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
