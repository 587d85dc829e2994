"""The dashboard in a real browser: Debian's chromium driven by Playwright.

One app is launched in-process on 127.0.0.1 and a free port, over a temporary workspace built
from the built-in world at a tiny size (``anomseg serve``'s "tiny" demo preset), with its job
worker running in a thread. Every check reads the store directly, so "the flag is stored" means
a row in the database, not a message on the page.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
TIMEOUT = 90_000  # ms; the machine running CI may be loaded


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def app_server(tmp_path_factory):
    pytest.importorskip("playwright.sync_api")
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (.ci/run does)")
    from anomseg.cli.serve_cmd import prepare_workspace
    from dashboard.app import build_app, launch
    from db import catalog
    from db.workspace import Workspace

    ws = Workspace.open(tmp_path_factory.mktemp("browser-ws"))
    prepare_workspace(ws, demo=True, demo_size="tiny", evaluate=False, quiet=True)
    with ws.store.read() as s:
        models = [m.name for m in catalog.list_models(s)]
    if (
        not models
    ):  # demo weights not in this checkout: an untrained ERFNet exercises the same paths
        ws.register_checkpoint("demo-erfnet", "erfnet", None, input_size=(128, 256))
    server = launch(build_app(ws), port=_free_port(), worker=True)
    yield ws, server.url
    server.close()
    ws.close()


@pytest.fixture(scope="module")
def browser(app_server):
    from playwright.sync_api import sync_playwright

    from dashboard.screenshots import CHROMIUM_ARGS

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()


def _open(browser, url):
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    ctx.set_default_timeout(TIMEOUT)
    page = ctx.new_page()
    page.goto(url, wait_until="load")
    page.wait_for_selector("#compare-gallery .thumbnail-item")
    return ctx, page


def _tab(page, name):
    page.get_by_role("tab", name=name).click()
    page.wait_for_timeout(300)


def _compare_first_image(page):
    page.locator("#compare-gallery .thumbnail-item").first.click()
    page.wait_for_selector("#compare-panels .thumbnail-item")


def _checked_methods(page):
    return page.locator("#compare-methods input[type=checkbox]:checked").count()


def _cell(page, elem_id, row, col):
    loc = page.locator(f'#{elem_id} [data-testid="cell-{row}-{col}"]').first
    loc.wait_for()
    return loc


def _paint(page):
    """Select the brush and drag one stroke across the middle of the editor canvas.

    Few pointer moves on purpose: software-rendered WebGL in headless chromium redraws the
    canvas on every move (~0.5-1 s each on a loaded machine).
    """
    ed = page.locator("#flag-editor")
    ed.get_by_role("button", name="Brush", exact=True).click()
    box = ed.locator("canvas").first.bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(cx - 60, cy)
    page.mouse.down()
    page.mouse.move(cx + 60, cy, steps=4)
    page.mouse.up()
    page.wait_for_timeout(300)


def _load_flag_editor(page):
    _tab(page, "Flag")
    page.locator("#flag-load").click()
    page.wait_for_selector("#flag-editor canvas")
    page.wait_for_timeout(1500)  # the background image is drawn after the canvas exists


def _flags(ws):
    from db import flags as dbflags

    with ws.store.read() as s:
        return [(f.id, f.kind, f.author, f.area, f.method) for f in dbflags.list_flags(s)]


# ----------------------------------------------------------------------------------------------


def test_app_opens_with_header_and_tabs(app_server, browser):
    ws, url = app_server
    ctx, page = _open(browser, url)
    assert "anomaly segmentation workbench" in page.locator("#anomseg-header").inner_text()
    page.wait_for_selector("#anomseg-status code")
    assert str(ws.root) in page.locator("#anomseg-status").inner_text()
    for name in ("Compare", "Flag", "Curate", "Retrain", "Leaderboard"):
        assert page.get_by_role("tab", name=name).count() == 1
    ctx.close()


def test_compare_shows_a_panel_per_method(app_server, browser):
    _ws, url = app_server
    ctx, page = _open(browser, url)
    n_methods = _checked_methods(page)
    assert n_methods >= 4  # msp, maxlogit, entropy, energy at least
    _compare_first_image(page)
    page.wait_for_function(
        f"document.querySelectorAll('#compare-panels .thumbnail-item').length == {n_methods}"
    )
    captions = page.locator("#compare-panels .caption-label").all_inner_texts()
    assert len(captions) == n_methods and all("AuPRC" in c for c in captions)
    # the per-image table has one row per method
    _cell(page, "compare-table", n_methods - 1, 0)
    # a slider move re-renders (no model run): the notes line reports the render time
    before = page.locator("#compare-notes").inner_text()
    page.locator("#compare-shared input[type=checkbox]").check()
    page.wait_for_function(
        "(b) => document.querySelector('#compare-notes').innerText !== b", arg=before
    )
    ctx.close()


def test_painting_a_false_positive_stores_a_flag(app_server, browser):
    ws, url = app_server
    ctx, page = _open(browser, url)
    _compare_first_image(page)
    before = _flags(ws)
    _load_flag_editor(page)
    _paint(page)
    page.locator("#flag-note textarea").fill("browser test")
    page.locator("#flag-save").click()
    page.wait_for_function(
        "document.querySelector('#flag-status').innerText.includes('Saved flag')"
    )
    after = _flags(ws)
    assert len(after) == len(before) + 1
    new = [f for f in after if f not in before][0]
    assert new[1] == "false_positive" and new[3] > 100
    # the new flag is listed under the editor
    _cell(page, "flag-table", 0, 0)
    assert str(new[0]) in page.locator("#flag-table").inner_text()
    ctx.close()


def test_saving_an_empty_flag_shows_a_message_and_stores_nothing(app_server, browser):
    ws, url = app_server
    ctx, page = _open(browser, url)
    _compare_first_image(page)
    before = _flags(ws)
    _load_flag_editor(page)
    page.locator("#flag-save").click()
    page.get_by_text("the flag is empty").first.wait_for()
    assert _flags(ws) == before
    ctx.close()


def test_two_sessions_flagging_at_once_lose_nothing(app_server, browser):
    ws, url = app_server
    pages = []
    for _ in range(2):
        ctx, page = _open(browser, url)
        _compare_first_image(page)
        _load_flag_editor(page)
        _paint(page)
        pages.append((ctx, page))
    before = _flags(ws)
    for _ctx, page in pages:  # both saves in flight together
        page.locator("#flag-save").click()
    for _ctx, page in pages:
        page.wait_for_function(
            "document.querySelector('#flag-status').innerText.includes('Saved flag')"
        )
    after = _flags(ws)
    assert len(after) == len(before) + 2
    for ctx, _page in pages:
        ctx.close()


def test_uploading_a_non_image_gives_a_specific_message(app_server, browser, tmp_path):
    ws, url = app_server
    bad = tmp_path / "notes.png"
    bad.write_text("this is not an image")
    ctx, page = _open(browser, url)
    uploads_before = sorted(Path(ws.uploads_dir).iterdir())
    page.locator("#compare-upload input[type=file]").set_input_files(str(bad))
    page.get_by_text("not a readable image").first.wait_for()
    assert sorted(Path(ws.uploads_dir).iterdir()) == uploads_before
    ctx.close()


def _paste_state(ws, sample_id, key="p0"):
    from anomseg.synth.records import PasteRecord
    from db import pastes as dbpastes

    with ws.store.read() as s:
        paste = dbpastes.get_paste(s, sample_id, key)
        cur = dbpastes.current_revision(s, paste.id)
        n = len(dbpastes.paste_history(s, paste.id))
        return PasteRecord.from_dict(cur.record), n


def _img_point(page, selector, x, y):
    """Screen coordinates of image pixel (x, y) of a gr.Image (object-fit: scale-down, centred;
    the same arithmetic as Gradio's select event)."""
    img = page.locator(selector)
    box = img.bounding_box()
    nw, nh = img.evaluate("i => [i.naturalWidth, i.naturalHeight]")
    scale = min(box["width"] / nw, box["height"] / nh, 1.0)
    ox = box["x"] + (box["width"] - nw * scale) / 2
    oy = box["y"] + (box["height"] - nh * scale) / 2
    return ox + (x + 0.5) * scale, oy + (y + 0.5) * scale


def _valid_edit(svc, sample_id, rec, candidates):
    bg = svc._background(sample_id)
    for cand in candidates:
        try:
            svc.check_placement(bg, cand)
        except Exception:
            continue
        return cand
    raise AssertionError("no valid nearby edit for this paste")


def _src_changes(page, src):
    page.wait_for_function(
        "(s) => document.querySelector('#curate-preview img').getAttribute('src') !== s", arg=src
    )


def test_editing_a_paste_rerenders_and_stores_revisions(app_server, browser):
    from dashboard.services import Services

    ws, url = app_server
    svc = Services(ws)
    ctx, page = _open(browser, url)
    _tab(page, "Curate")
    _cell(page, "curate-samples", 0, 1).click()
    page.wait_for_selector("#curate-preview img")
    page.wait_for_function("document.querySelector('#curate-object input').value.length > 0")
    sample_id = int(page.locator("#curate-sample-id input").input_value())
    rec0, n0 = _paste_state(ws, sample_id)

    # 1) click the preview: the selected paste moves there (a spot still on the ground)
    target = _valid_edit(
        svc, sample_id, rec0, [rec0.replace(x=rec0.x + dx) for dx in (4, -4, 6, -6, 3, -3)]
    )
    src = page.locator("#curate-preview img").get_attribute("src")
    page.mouse.click(*_img_point(page, "#curate-preview img", target.x, target.y))
    _src_changes(page, src)
    rec1, n1 = _paste_state(ws, sample_id)
    assert n1 == n0 + 1 and abs(rec1.x - target.x) <= 1 and abs(rec1.y - target.y) <= 1

    # 2) swap the source object and apply: a different object is rendered
    others = [
        o
        for o in svc.object_choices(rec1.source, limit=2000)
        if o.split("-")[0] != rec1.object_id.split("-")[0]
    ]
    new = _valid_edit(svc, sample_id, rec1, [rec1.replace(object_id=o) for o in others[::37][:40]])
    src = page.locator("#curate-preview img").get_attribute("src")
    obj = page.locator("#curate-object input")
    obj.fill(new.object_id)
    obj.press("Enter")
    page.locator("#curate-apply").click()
    _src_changes(page, src)
    rec2, n2 = _paste_state(ws, sample_id)
    assert n2 == n1 + 1 and rec2.object_id == new.object_id
    # the render cache that training reads now matches the new revisions
    from db import pastes as dbpastes
    from training.dataset import revisions_hash

    with ws.store.read() as s:
        smp = dbpastes.get_sample(s, sample_id)
        revs = {p.key: r.content_hash for p, r in dbpastes.current_revisions(s, sample_id)}
        assert smp.render["revisions_hash"] == revisions_hash(revs)

    # 3) undo goes back one revision without deleting anything
    page.locator("#curate-undo").click()
    page.get_by_text("Undone").first.wait_for()
    rec3, n3 = _paste_state(ws, sample_id)
    assert rec3 == rec1 and n3 == n2

    # 4) a move off the road is refused with a message, nothing stored
    sky = rec3.replace(y=5 + 1)
    src = page.locator("#curate-preview img").get_attribute("src")
    page.mouse.click(*_img_point(page, "#curate-preview img", sky.x, sky.y))
    page.get_by_text("off the").first.wait_for()
    assert _paste_state(ws, sample_id) == (rec3, n3)
    ctx.close()


def test_retrain_runs_and_the_new_head_appears_everywhere(app_server, browser):
    ws, url = app_server
    ctx, page = _open(browser, url)
    _tab(page, "Curate")
    _cell(page, "curate-samples", 0, 1)
    _tab(page, "Retrain")
    page.locator("#retrain-summary table").wait_for()
    t0 = time.monotonic()
    page.locator("#retrain-go").click()
    page.wait_for_function(
        "document.querySelector('#retrain-job-status').innerText.match(/: (done|failed|cancelled)/)",
        timeout=180_000,
    )
    status = page.locator("#retrain-job-status").inner_text()
    assert "done" in status, status
    assert time.monotonic() - t0 < 180
    # history table lists v1 as active
    _cell(page, "retrain-history", 0, 0)
    assert "●" in page.locator("#retrain-history").inner_text()
    # Compare now offers the head version, ticked, and shows its panel
    _tab(page, "Compare")
    page.locator("#compare-methods").get_by_text("Head v1").wait_for()
    n_methods = _checked_methods(page)
    _compare_first_image(page)
    page.wait_for_function(
        f"document.querySelectorAll('#compare-panels .thumbnail-item').length == {n_methods}"
    )
    assert any(
        "Head v1" in c for c in page.locator("#compare-panels .caption-label").all_inner_texts()
    )
    # and the leaderboard holds its evaluation
    _tab(page, "Leaderboard")
    page.locator("#lb-table [role=gridcell]", has_text="head:1").first.wait_for()
    ctx.close()


def test_with_auth_the_browser_gets_the_login_page_first(app_server, browser):
    from dashboard.app import build_app, launch
    from dashboard.screenshots import login

    ws, _url = app_server
    server = launch(build_app(ws), port=_free_port(), auth=("ann", "pw-123"), worker=False)
    try:
        ctx = browser.new_context(viewport={"width": 1200, "height": 900})
        ctx.set_default_timeout(TIMEOUT)
        page = ctx.new_page()
        page.goto(server.url, wait_until="load")
        page.locator("input[type=password]").wait_for()
        assert page.locator("#compare-gallery").count() == 0  # nothing of the app before login
        login(page, ("ann", "pw-123"))
        page.wait_for_selector("#compare-gallery .thumbnail-item")
        ctx.close()
    finally:
        server.close()
