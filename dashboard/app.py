"""The Gradio app: ``build_app(workspace)`` assembles the tabs; ``launch`` serves it.

``launch`` binds 127.0.0.1 unless told otherwise. With ``auth`` it puts an ASGI gate in front of
Gradio that refuses every route but the login page and its static assets to a client without a
valid session cookie (Gradio's own ``auth`` leaves a few routes such as the heartbeat open).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gradio as gr

from anomseg.errors import InputError
from dashboard import compare, curate, flag, leaderboard, retrain
from dashboard.services import Services
from dashboard.ui import CSS, HEADER_HTML, THEME, Context, guarded

log = logging.getLogger("anomseg.dashboard")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
MAX_UPLOAD = "64mb"


def build_app(workspace: Any, services: Services | None = None) -> gr.Blocks:
    """The dashboard for one workspace (no server started, no thread started)."""
    svc = services or Services(workspace)
    # delete_cache: rendered panels are written to Gradio's file cache on every change; files
    # older than an hour are swept every 10 minutes so a server left running for days keeps
    # its disk use bounded
    with gr.Blocks(
        title="anomseg workbench",
        fill_width=True,
        analytics_enabled=False,
        delete_cache=(600, 3600),
    ) as app:
        gr.HTML(HEADER_HTML)
        status = gr.Markdown(elem_id="anomseg-status")

        @guarded
        def header():
            return svc.catalog.header_markdown()

        ctx = Context(svc, header=status, header_fn=header)
        with gr.Tabs(selected="compare") as tabs:
            ctx.tabs = tabs
            with gr.Tab("Compare", id="compare", elem_id="tab-compare"):
                compare.build(ctx)
            with gr.Tab("Flag", id="flag", elem_id="tab-flag") as flag_tab:
                flag.build(ctx)
            with gr.Tab("Curate", id="curate", elem_id="tab-curate") as curate_tab:
                curate.build(ctx)
            with gr.Tab("Retrain", id="retrain", elem_id="tab-retrain") as retrain_tab:
                retrain.build(ctx)
            with gr.Tab("Leaderboard", id="leaderboard", elem_id="tab-leaderboard") as lb_tab:
                leaderboard.build(ctx)

        def _wire(event: Callable[..., Any], key: str) -> None:
            fn, inputs, outputs = ctx[key]
            event(fn, inputs, outputs, api_name=False)

        # Everything shown comes from the database: each page load and each tab switch re-reads
        # it, so two browsers (or a CLI run) see each other's changes.
        app.load(header, None, status, api_name=False)

        # models and datasets registered while the app runs (add-model / add-dataset from a
        # shell) appear in the lists on the next page load, not only after a restart
        @guarded
        def catalogue(m, ds, rm, lb_filter, lb_eval, lb_heads):
            models = svc.catalog.model_names()
            datasets = svc.catalog.dataset_choices()
            ids = [i for _label, i in datasets]

            def pick(cur, opts):
                return cur if cur in opts else (opts[0] if opts else None)

            return (
                gr.update(choices=models, value=pick(m, models)),
                gr.update(choices=datasets, value=pick(ds, ids)),
                gr.update(choices=models, value=pick(rm, models)),
                # the Leaderboard's filter keeps what is still registered (empty = all)
                gr.update(choices=models, value=[x for x in (lb_filter or []) if x in models]),
                gr.update(choices=models, value=pick(lb_eval, models)),
                gr.update(choices=models, value=pick(lb_heads, models)),
            )

        lists = [
            ctx["compare.model"],
            ctx["compare.dataset"],
            ctx["retrain.model"],
            *ctx["leaderboard.model_lists"],
        ]
        app.load(catalogue, lists, lists, api_name=False)
        cmp_dataset = ctx["compare.dataset"]
        app.load(
            ctx["compare.on_dataset"],
            cmp_dataset,
            [ctx["compare.gallery"], ctx["compare.gallery_ids"]],
            api_name=False,
        )
        app.load(
            ctx["compare.on_model"],
            [ctx["compare.model"], ctx["compare.methods"]],
            ctx["compare.methods"],
            api_name=False,
        )
        _wire(app.load, "retrain.overview")
        _wire(app.load, "retrain.resume")
        _wire(app.load, "leaderboard.load")
        _wire(app.load, "leaderboard.heads")
        _wire(app.load, "curate.list")
        _wire(flag_tab.select, "flag.refresh")
        _wire(flag_tab.select, "flag.all")
        _wire(curate_tab.select, "curate.list")
        _wire(retrain_tab.select, "retrain.overview")
        _wire(lb_tab.select, "leaderboard.load")
        _wire(lb_tab.select, "leaderboard.heads")
        for t in (flag_tab, curate_tab, retrain_tab, lb_tab):
            t.select(header, None, status, api_name=False)

    app.queue(default_concurrency_limit=2)
    app.anomseg_services = svc  # type: ignore[attr-defined]
    app.anomseg_workspace = workspace  # type: ignore[attr-defined]
    return app


# ----------------------------------------------------------------------------- access control

# "/gradio_api/startup-events" is what launch() itself calls to run the app's start-up events
# once (an idempotent trigger that returns a boolean); everything else needs a session.
_OPEN_EXACT = {
    "/",
    "/login",
    "/login/",
    "/favicon.ico",
    "/robots.txt",
    "/manifest.json",
    "/theme.css",
    "/gradio_api/startup-events",
}
_OPEN_PREFIXES = ("/assets/", "/static/", "/svelte/", "/pwa_icon", "/gradio_api/theme.css")


class AuthGate:
    """ASGI middleware: without a valid Gradio session cookie, only the login page is served."""

    def __init__(self, app: Any) -> None:
        self.app = app

    @staticmethod
    def _is_open(path: str) -> bool:
        return path in _OPEN_EXACT or path.startswith(_OPEN_PREFIXES)

    @staticmethod
    def _authenticated(scope: dict) -> bool:
        gr_app = scope.get("app")
        tokens = getattr(gr_app, "tokens", None)
        cookie_id = getattr(gr_app, "cookie_id", None)
        if not tokens or cookie_id is None:
            return False
        raw = b"; ".join(v for k, v in scope.get("headers", []) if k == b"cookie").decode("latin-1")
        cookies = {}
        for part in raw.split(";"):
            name, sep, value = part.strip().partition("=")
            if sep:
                cookies[name] = value
        for name in (f"access-token-{cookie_id}", f"access-token-unsecure-{cookie_id}"):
            tok = cookies.get(name)
            if tok and tokens.get(tok) is not None:
                return True
        return False

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "/")
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :] or "/"
        if self._is_open(path) or self._authenticated(scope):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 4401})
            return
        body = json.dumps({"detail": {"error": "Not authenticated", "auth_message": None}}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def parse_auth(text: str | None) -> tuple[str, str] | None:
    """``USER:PASS`` -> (user, password); InputError on anything else."""
    if text is None:
        return None
    user, sep, password = text.partition(":")
    if not sep or not user or not password:
        raise InputError(f"--auth {text!r}: expected USER:PASS with a non-empty user and password")
    return user, password


# ----------------------------------------------------------------------------- serving


class Server:
    """A running dashboard: its URL, and ``close()`` (also stops the in-process job worker)."""

    def __init__(self, app: gr.Blocks, url: str, worker_stop: threading.Event | None) -> None:
        self.app = app
        self.url = url
        self._worker_stop = worker_stop

    def close(self) -> None:
        """Stop the server (and the worker thread it started)."""
        if self._worker_stop is not None:
            self._worker_stop.set()
        self.app.close()


def start_worker(workspace: Any, poll_s: float = 1.0) -> threading.Event:
    """Run the job worker (training, generation) in a daemon thread; returns its stop event."""
    from workbench.worker import Worker

    worker = Worker(workspace.store, Path(workspace.root), poll_s=poll_s)
    _thread, stop = worker.start_thread()
    return stop


def launch(
    app: gr.Blocks,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    auth: tuple[str, str] | None = None,
    *,
    worker: bool = True,
    quiet: bool = True,
) -> Server:
    """Serve ``app`` in background threads (returns at once); see ``Server``."""
    from starlette.middleware import Middleware

    ws = getattr(app, "anomseg_workspace", None)
    stop = start_worker(ws) if (worker and ws is not None) else None
    allowed = [str(Path(ws.cache_dir).resolve())] if ws is not None else []
    app_kwargs = {"middleware": [Middleware(AuthGate)]} if auth else None
    try:
        _app, local_url, _share = app.launch(
            server_name=host,
            server_port=port,
            auth=auth,
            auth_message="anomseg: sign in to use this workbench",
            prevent_thread_lock=True,
            show_error=True,
            quiet=quiet,
            inbrowser=False,
            share=False,
            max_file_size=MAX_UPLOAD,
            allowed_paths=allowed,
            app_kwargs=app_kwargs,
            theme=THEME,
            css=CSS,
            footer_links=[],
            ssr_mode=False,
            mcp_server=False,
        )
    except BaseException:
        if stop is not None:
            stop.set()
        raise
    url = local_url or f"http://{host}:{port}/"
    log.info("anomseg dashboard at %s", url)
    return Server(app, url, stop)
