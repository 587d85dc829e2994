"""Load test: 8 concurrent clients doing Compare requests against a running app for 60 s.

Each client (its own ``gradio_client`` session) loops until the deadline (a bounded loop) over
the workspace's eval images with random opacities and threshold modes, so requests mix cold
images, cached maps and pure re-rendering. Loopback only: the script refuses any URL whose host
is not 127.0.0.1 / localhost. Reports requests, failures, p50 / p95 / max latency, throughput
and the app's resident memory (sampled from /proc while the test runs), to show that the
bounded caches keep memory flat. Baseline: one client alone, first compare of up to five
images, measured first in the same run (the ratio shows the cost of 8 clients sharing the
machine).

    python benchmarks/load_app.py [--clients 8] [--seconds 60] [--workspace DIR] [--url URL]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

from bench_app import CompareClient, all_methods, free_port, image_ids, prepare, start_server


def rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def pct(values: list[float], q: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, max(0, round(q * (len(v) - 1))))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workspace", type=Path, default=None)
    ap.add_argument("--url", default=None, help="an app already running on this machine")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    tmp = None
    root = args.workspace
    if root is None:
        tmp = tempfile.TemporaryDirectory(prefix="anomseg-load-app-")
        root = Path(tmp.name)
    model = prepare(root)
    ids, ds_id = image_ids(root, min_width=1)
    methods = all_methods(root, model)
    proc = None
    url = args.url
    if url is None:
        port = free_port()
        proc = start_server(root, port)
        url = f"http://127.0.0.1:{port}/"
    host = urllib.parse.urlparse(url).hostname
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit(f"refusing to load-test {url}: loopback addresses only")
    try:
        solo = CompareClient(url, model, download=False)
        solo.compare(ids[0], methods, 0.6, ds_id)  # model load, outside the figures
        base = []
        for i in ids[: min(5, len(ids))]:
            t0 = time.perf_counter()
            solo.compare(i, methods, 0.6, ds_id)
            base.append(time.perf_counter() - t0)
        baseline = statistics.median(base)

        clients = [CompareClient(url, model, download=False) for _ in range(args.clients)]
        lat: list[float] = []
        failures: list[str] = []
        lock = threading.Lock()
        rss: list[float] = []
        stop = threading.Event()
        deadline = time.monotonic() + args.seconds

        def sample() -> None:
            while not stop.wait(0.5):
                if proc is not None and (m := rss_mib(proc.pid)) is not None:
                    rss.append(m)

        def run(k: int, client: CompareClient) -> None:
            rng = random.Random(args.seed * 100 + k)
            while time.monotonic() < deadline:  # bounded: ends at the deadline
                image_id = rng.choice(ids)
                opacity = round(rng.uniform(0.2, 0.9), 2)
                t0 = time.perf_counter()
                try:
                    out = client.compare(image_id, methods, opacity, ds_id)
                    if len(out[0]) != len(methods):
                        raise RuntimeError(f"{len(out[0])} panels for {len(methods)} methods")
                except Exception as exc:  # every failure is counted and shown
                    with lock:
                        failures.append(f"{type(exc).__name__}: {exc}"[:200])
                    continue
                with lock:
                    lat.append(time.perf_counter() - t0)

        rss0 = rss_mib(proc.pid) if proc is not None else None
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        threads = [threading.Thread(target=run, args=(k, c)) for k, c in enumerate(clients)]
        t_start = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.monotonic() - t_start
        stop.set()
        sampler.join()

        n = len(lat) + len(failures)
        print(
            f"app {url} · {args.clients} clients · {wall:.0f} s · {len(ids)} images · {len(methods)} methods"
        )
        print(
            f"single-client baseline (one client alone, first compare of an image): median {baseline * 1000:.0f} ms"
        )
        print()
        print(
            "| clients | requests | failures | p50 ms | p95 ms | max ms | req/s | p50 / baseline |"
        )
        print("|---:|---:|---:|---:|---:|---:|---:|---:|")
        if lat:
            p50, p95 = pct(lat, 0.5), pct(lat, 0.95)
            print(
                f"| {args.clients} | {n} | {len(failures)} | {p50 * 1000:.0f} | {p95 * 1000:.0f} | "
                f"{max(lat) * 1000:.0f} | {len(lat) / wall:.1f} | {p50 / baseline:.1f}x |"
            )
        if rss:
            print(
                f"app memory (RSS): {rss0:.0f} MiB at start, max {max(rss):.0f} MiB, last {rss[-1]:.0f} MiB"
            )
        for f in sorted(set(failures))[:10]:
            print("  failure:", f)
        return 1 if failures or not lat else 0
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
        if tmp is not None:
            tmp.cleanup()


if __name__ == "__main__":
    sys.exit(main())
