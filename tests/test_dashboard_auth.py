"""Access control of the running app, checked with plain HTTP requests (no browser).

With ``--auth`` every route but the login page and its static assets must refuse a client
without a session cookie (Gradio's own check leaves some routes, e.g. the heartbeat, open; the
app's gate closes them); after logging in, the same client gets through. The server binds
127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import http.cookiejar
import socket
import urllib.error
import urllib.parse
import urllib.request

import pytest

USER, PASSWORD = "ann", "s3cret-pass"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from dashboard.app import build_app, launch
    from workbench.workspace import Workspace

    ws = Workspace.open(tmp_path_factory.mktemp("auth-ws"))
    srv = launch(build_app(ws), port=_free_port(), auth=(USER, PASSWORD), worker=False)
    yield srv.url.rstrip("/")
    srv.close()
    ws.close()


def _request(opener, method, url, data=None, headers=None):
    req = urllib.request.Request(url, method=method, data=data, headers=headers or {})
    try:
        with opener.open(req, timeout=10) as resp:
            return resp.status, resp.read(2000)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(2000)


JSON = {"Content-Type": "application/json"}
PROTECTED = [
    ("GET", "/config", None),
    ("GET", "/gradio_api/info", None),
    ("GET", "/gradio_api/openapi.json", None),
    ("POST", "/gradio_api/queue/join", b'{"data":[],"fn_index":0,"session_hash":"x"}'),
    ("GET", "/gradio_api/queue/data?session_hash=x", None),
    ("POST", "/gradio_api/call/compare", b'{"data":[]}'),
    ("POST", "/gradio_api/run/compare", b'{"data":[]}'),
    ("POST", "/gradio_api/upload", b""),
    ("GET", "/gradio_api/file=/etc/passwd", None),
    ("GET", "/gradio_api/heartbeat/x", None),  # open in plain Gradio
    ("POST", "/gradio_api/cancel", b'{"session_hash":"x","fn_index":0,"event_id":"e"}'),
    ("POST", "/gradio_api/reset", b'{"session_hash":"x","fn_index":0}'),
    ("GET", "/monitoring/summary", None),
]


@pytest.mark.parametrize("method, path, body", PROTECTED)
def test_unauthenticated_requests_are_refused(server, method, path, body):
    opener = urllib.request.build_opener()
    status, _ = _request(opener, method, server + path, body, JSON if body is not None else None)
    assert status == 401, f"{method} {path} answered {status}"


def test_only_the_login_page_is_open_and_login_opens_the_rest(server):
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    status, body = _request(opener, "GET", server + "/")
    assert status == 200 and b"<html" in body.lower()
    # wrong password: refused, and still no access
    form = urllib.parse.urlencode({"username": USER, "password": "wrong"}).encode()
    status, _ = _request(
        opener,
        "POST",
        server + "/login",
        form,
        {"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert status >= 400
    assert _request(opener, "GET", server + "/config")[0] == 401
    # right password: the session cookie opens the API
    form = urllib.parse.urlencode({"username": USER, "password": PASSWORD}).encode()
    status, _ = _request(
        opener,
        "POST",
        server + "/login",
        form,
        {"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert status == 200
    assert _request(opener, "GET", server + "/config")[0] == 200
    status, body = _request(opener, "GET", server + "/gradio_api/info")
    assert status == 200 and b"compare" in body


def test_default_bind_is_loopback(server):
    import argparse

    from dashboard.app import DEFAULT_HOST
    from workbench.cli import serve_cmd

    p = argparse.ArgumentParser()
    serve_cmd.add_arguments(p)
    assert p.parse_args([]).host == "127.0.0.1" == DEFAULT_HOST
    assert urllib.parse.urlparse(server).hostname == "127.0.0.1"


def test_bad_auth_option_is_a_clear_error():
    from anomseg.errors import InputError
    from dashboard.app import parse_auth

    assert parse_auth("a:b:c") == ("a", "b:c")
    for bad in ("nopassword", ":x", "user:"):
        with pytest.raises(InputError, match="USER:PASS"):
            parse_auth(bad)
