"""``anomseg serve``: start the dashboard on a workspace (building the demo on first run).

    anomseg serve [--workspace DIR] [--host 127.0.0.1] [--port 7860] [--auth USER:PASS]
                  [--no-worker] [--no-demo] [--demo-size full|small|tiny]
                  [--screenshots DIR]

The first run on an empty workspace builds the built-in world's demo data, registers the demo
models and queues their evaluation, so a newcomer lands in a populated app; nothing is
downloaded. ``--screenshots DIR`` starts the app, writes one PNG per tab into DIR (for the
README) and exits.
"""

from __future__ import annotations

import argparse
import sys
import time

DEMO_PRESETS = {
    # name -> DemoSizes keyword arguments (the "full" preset is DemoSizes' defaults)
    "full": {},
    "small": {
        "n_train": 24,
        "n_heldout": 4,
        "n_obstacles": 6,
        "n_anomalies": 6,
        "size": (256, 512),
    },
    "tiny": {
        "n_train": 8,
        "n_heldout": 2,
        "n_obstacles": 3,
        "n_anomalies": 3,
        "size": (128, 256),
        "workers": 1,
    },
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``anomseg serve``."""
    parser.add_argument(
        "--workspace",
        default=None,
        help="workspace folder (default $ANOMSEG_WORKSPACE or ./workspace)",
    )
    parser.add_argument(
        "--url", default=None, help="database URL (default: SQLite in the workspace)"
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)"
    )
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    parser.add_argument(
        "--auth", metavar="USER:PASS", default=None, help="require this login for every route"
    )
    parser.add_argument(
        "--no-worker",
        action="store_true",
        help="do not run the job worker inside the app (use `anomseg worker`)",
    )
    parser.add_argument(
        "--no-demo",
        action="store_true",
        help="do not build the built-in demo on an empty workspace",
    )
    parser.add_argument(
        "--demo-size",
        choices=sorted(DEMO_PRESETS),
        default="full",
        help="how much demo data the first run builds (default full; small/tiny for tests)",
    )
    parser.add_argument(
        "--screenshots", metavar="DIR", default=None, help="write one PNG per tab into DIR and exit"
    )


def prepare_workspace(
    ws, demo: bool = True, demo_size: str = "full", evaluate: bool = True, quiet: bool = False
) -> None:
    """First run: build and register the demo, then queue an evaluation of each model."""
    from tqdm.auto import tqdm

    from workbench.bootstrap import DemoSizes, bootstrap_demo

    if demo and ws.is_empty():
        bar = tqdm(
            total=100, desc="building the demo workspace", unit="%", disable=quiet, file=sys.stderr
        )

        def progress(frac: float, msg: str) -> None:
            bar.n = int(100 * frac)
            bar.set_postfix_str(msg[:40], refresh=False)  # one refresh below, not two lines
            if frac < 1.0:  # the last state is written once, by close()
                bar.refresh()

        bootstrap_demo(ws, progress=progress, sizes=DemoSizes(**DEMO_PRESETS[demo_size]))
        bar.close()
    if evaluate:
        queue_missing_evaluations(ws)


def queue_missing_evaluations(ws) -> list[int]:
    """Queue an ``evaluate`` job for every model without results (and none queued yet)."""
    from db import catalog, results
    from db import jobs as dbjobs
    from workbench.jobs import enqueue_evaluate

    with ws.store.read() as s:
        have = {r["model"] for r in results.leaderboard(s)}
        pending = {
            (j.params or {}).get("model")
            for j in dbjobs.list_jobs(s, kind="evaluate", limit=200)
            if j.status in ("queued", "running")
        }
        todo = [m.name for m in catalog.list_models(s) if m.name not in have | pending]
        has_eval = bool(catalog.list_datasets(s, role="eval"))
    if not has_eval:
        return []
    return [enqueue_evaluate(ws.store, m) for m in todo]


def wait_for_jobs(ws, timeout_s: float = 900, poll_s: float = 1.0) -> None:
    """Block until no job is queued or running (or the timeout passes)."""
    from db import jobs as dbjobs

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with ws.store.read() as s:
            busy = [j for j in dbjobs.list_jobs(s, limit=100) if j.status in ("queued", "running")]
        if not busy:
            return
        time.sleep(poll_s)


def _port_in_use(host: str, port: int, exc: OSError) -> Exception:
    from anomseg.errors import InputError

    why = exc.strerror or str(exc).split(". ")[0]
    return InputError(
        f"port {port} on {host} is already in use or not available ({why}); is another "
        "anomseg serve running? pick another with --port"
    )


def check_port_free(host: str, port: int) -> None:
    """InputError naming the port when ``host:port`` cannot be bound (busy, or out of range)."""
    import socket

    from anomseg.errors import InputError

    if not 0 < port < 65536:
        raise InputError(f"--port {port}; expected 1..65535")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise _port_in_use(host, port, exc) from None


def run(args: argparse.Namespace) -> int:
    """Start the dashboard and serve until interrupted (or write screenshots and exit)."""
    from dashboard.app import build_app, launch, parse_auth
    from workbench.workspace import Workspace

    auth = parse_auth(args.auth)
    check_port_free(args.host, args.port)  # before the demo build, not after minutes of it
    ws = Workspace.open(args.workspace, url=args.url)
    # a previous app killed mid-job: end its jobs now, not once the app has finished starting
    from db.jobs import reap_dead_jobs

    dead = ws.store.transact(lambda s: reap_dead_jobs(s))
    if dead:
        print(f"ended {len(dead)} job(s) of a stopped worker: {dead}", flush=True)
    prepare_workspace(
        ws, demo=not args.no_demo, demo_size=args.demo_size, evaluate=not args.no_worker
    )
    app = build_app(ws)
    try:
        server = launch(app, host=args.host, port=args.port, auth=auth, worker=not args.no_worker)
    except OSError as exc:  # taken meanwhile: still one line, not gradio's traceback
        ws.close()
        raise _port_in_use(args.host, args.port, exc) from None
    try:
        if args.screenshots:
            from dashboard.screenshots import take_screenshots

            wait_for_jobs(
                ws, timeout_s=900
            )  # e.g. the first evaluation, so the leaderboard is full
            paths = take_screenshots(server.url, args.screenshots, auth=auth)
            for p in paths:
                print(p)
            return 0
        print(
            f"anomseg dashboard on {server.url} (workspace {ws.root}); Ctrl-C to stop", flush=True
        )
        while True:
            time.sleep(3600)
    finally:
        server.close()
        ws.close()
