"""Benchmark: the dashboard's Compare view through ``gradio_client`` against a running app.

Three figures per 512x1024 image, every method of the model (post-hoc scorers + head versions):

* **cold**: the first compare of an image (one forward of the demo ERFNet on CPU, every scorer,
  per-image metrics, rendering, transfer of the panels to the client);
* **cached**: the same request again (maps come from the app's bounded map cache);
* **slider move**: the same image with another opacity (pure re-rendering).

Targets (issue 6): cold < 2 s, cached < 300 ms, slider < 200 ms. The baseline is the cold request
itself, measured in the same run; the script prints cached/cold and slider/cold.

By default the script prepares a workspace (the built-in world at 512x1024, a few images, one
trained head so "every method" includes a learned one), starts ``anomseg serve`` on it in a
subprocess on 127.0.0.1 and a free port, and stops it at the end. ``--url`` benchmarks an app
that is already running instead.

    python benchmarks/bench_app.py [--images 5] [--workspace DIR] [--url http://127.0.0.1:7860/]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

BENCH_DEMO = {
    "n_train": 8,
    "n_heldout": 2,
    "n_obstacles": 6,
    "n_anomalies": 6,
    "size": (512, 1024),
    "workers": 2,
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def prepare(root: Path) -> str:
    """A workspace with the demo world at 512x1024 and one trained head; returns the model name."""
    from db import catalog
    from workbench.bootstrap import DemoSizes, bootstrap_demo
    from workbench.jobs import enqueue_training
    from workbench.worker import Worker
    from workbench.workspace import Workspace

    ws = Workspace.open(root)
    try:
        if ws.is_empty():
            print(f"building a benchmark workspace in {root} ...", flush=True)
            bootstrap_demo(ws, sizes=DemoSizes(**BENCH_DEMO))
        with ws.store.read() as s:
            models = [m.name for m in catalog.list_models(s)]
        if not models:
            print(
                "no demo weights in this checkout: using an untrained ERFNet at 128x256 (same cost)"
            )
            ws.register_checkpoint("demo-erfnet", "erfnet", None, input_size=(128, 256))
            models = ["demo-erfnet"]
        model = "demo-erfnet" if "demo-erfnet" in models else models[0]
        from db import heads as dbheads

        with ws.store.read() as s:
            has_head = bool(dbheads.list_head_versions(s, catalog.get_model(s, model).id))
        if not has_head:
            print(
                "training one head version so the compare view includes a learned method ...",
                flush=True,
            )
            enqueue_training(
                ws.store,
                {"model": model, "head": "stats", "epochs": 1, "activate": True, "evaluate": False},
            )
            Worker(ws.store, ws.root).run_once()
        return model
    finally:
        ws.close()


def start_server(root: Path, port: int) -> subprocess.Popen:
    """``anomseg serve`` on the workspace in a subprocess; waits until it answers."""
    cmd = [
        sys.executable,
        "-m",
        "workbench",
        "serve",
        "--workspace",
        str(root),
        "--port",
        str(port),
        "--no-worker",
        "--no-demo",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"anomseg serve exited: {proc.stderr.read()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return proc
        except OSError:
            time.sleep(0.5)
    proc.terminate()
    raise SystemExit("anomseg serve did not start within 180 s")


def image_ids(root: Path, min_width: int = 1024) -> tuple[list[int], int]:
    """Ids of the eval images at least ``min_width`` wide, and their dataset id."""
    from sqlalchemy import select

    from db.models import Dataset, Image
    from workbench.workspace import Workspace

    ws = Workspace.open(root)
    try:
        with ws.store.read() as s:
            rows = s.execute(
                select(Image.id, Image.dataset_id, Image.width)
                .join(Dataset, Image.dataset_id == Dataset.id)
                .where(Dataset.role == "eval", Image.width >= min_width)
                .order_by(Image.id)
            ).all()
    finally:
        ws.close()
    if not rows:
        raise SystemExit(f"no eval image of width >= {min_width} in {root}")
    return [int(r[0]) for r in rows], int(rows[0][1])


class CompareClient:
    """The Compare endpoint through gradio_client, with the app's current method list."""

    def __init__(self, url: str, model: str, download: bool = True) -> None:
        from gradio_client import Client

        # download=False: the reply names the panel files (as a browser gets it, which then
        # fetches them in parallel); download=True: gradio_client also fetches each panel, one
        # after the other
        self.client = Client(url, verbose=False, download_files=download)
        self.model = model
        info = self.client.view_api(return_format="dict", print_info=False)
        params = info["named_endpoints"]["/compare"]["parameters"]
        self.defaults = [p.get("parameter_default") for p in params]

    def compare(
        self, image_id: int, methods: list[str], opacity: float = 0.6, dataset: int | None = None
    ):
        args = [self.model, image_id, methods, opacity, "off", 0.5, False, True, "inferno", dataset]
        args += self.defaults[len(args) :]  # the method-parameter sliders: their defaults
        return self.client.predict(*args, api_name="/compare")


def all_methods(root: Path, model: str) -> list[str]:
    from dashboard.services import Services
    from workbench.workspace import Workspace

    ws = Workspace.open(root)
    try:
        return Services(ws).scores.default_methods(model)
    finally:
        ws.close()


def timed(fn, *a, **kw) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn(*a, **kw)
    return time.perf_counter() - t0, out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--workspace", type=Path, default=None, help="workspace to use (default: a temporary one)"
    )
    ap.add_argument("--url", default=None, help="benchmark an app already running at this URL")
    ap.add_argument("--images", type=int, default=5, help="images timed (default 5)")
    args = ap.parse_args()

    tmp = None
    root = args.workspace
    if root is None:
        tmp = tempfile.TemporaryDirectory(prefix="anomseg-bench-app-")
        root = Path(tmp.name)
    model = prepare(root)
    ids, ds_id = image_ids(root)
    methods = all_methods(root, model)
    proc = None
    url = args.url
    if url is None:
        proc = start_server(root, free_port())
        url = f"http://127.0.0.1:{proc.args[proc.args.index('--port') + 1]}/"
    try:
        client = CompareClient(url, model, download=False)
        fetching = CompareClient(url, model, download=True)
        print(f"app {url} · model {model} · {len(methods)} methods: {', '.join(methods)}")
        # warm-up on the last image: loads the model into the app (a one-off, not a compare cost)
        t_warm, _ = timed(client.compare, ids[-1], methods, 0.6, ds_id)
        print(f"warm-up (model load + first compare): {t_warm * 1000:.0f} ms")
        rows: dict[str, list[float]] = {
            k: [] for k in ("cold", "cached", "slider", "cached+dl", "slider+dl")
        }
        for n, image_id in enumerate(ids[: min(args.images, len(ids) - 1)]):
            t, out = timed(client.compare, image_id, methods, 0.6, ds_id)
            # the panels arrive inline (one <figure> with a data-URI image per method)
            assert out[0].count('class="anomseg-panel"') == len(methods), "one panel per method"
            rows["cold"].append(t)
            rows["cached"].append(timed(client.compare, image_id, methods, 0.6, ds_id)[0])
            rows["slider"].append(
                timed(client.compare, image_id, methods, 0.30 + 0.01 * n, ds_id)[0]
            )
            rows["cached+dl"].append(timed(fetching.compare, image_id, methods, 0.6, ds_id)[0])
            rows["slider+dl"].append(
                timed(fetching.compare, image_id, methods, 0.50 + 0.01 * n, ds_id)[0]
            )
            print(
                f"  image #{image_id}: "
                + " · ".join(f"{k} {v[-1] * 1000:.0f} ms" for k, v in rows.items())
            )
        med = {k: statistics.median(v) for k, v in rows.items()}
        c = med["cold"]
        print()
        print("| request (512x1024 image, every method) | median ms | target ms | ratio to cold |")
        print("|---|---:|---:|---:|")
        for key, label, target in (
            ("cold", "cold (forward + scoring + render)", 2000),
            ("cached", "cached (same image again)", 300),
            ("slider", "slider move (other opacity)", 200),
            ("cached+dl", "cached, client also downloads every panel", 300),
            ("slider+dl", "slider move, client also downloads every panel", 200),
        ):
            print(f"| {label} | {med[key] * 1000:.0f} | {target} | {med[key] / c:.3f} |")
        print(
            f"cached/cold = {med['cached'] / c:.3f} ({c / med['cached']:.1f}x faster); slider/cold = {med['slider'] / c:.3f}"
        )
        print(
            f"machine: {os.cpu_count()} CPUs, load average {' '.join(f'{v:.1f}' for v in os.getloadavg())}"
        )
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
        if tmp is not None:
            tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
