"""The dashboard in a real browser: Debian's chromium driven by Playwright.

One app is launched in-process on 127.0.0.1 and a free port, over a temporary workspace built
from the built-in world at a tiny size (``anomseg serve``'s "tiny" demo preset), with its job
worker running in a thread. Every check reads the store directly, so "the flag is stored" means
a row in the database, not a message on the page.
"""

from __future__ import annotations

import re
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
    from dashboard.app import build_app, launch
    from db import catalog
    from workbench.cli.serve_cmd import prepare_workspace
    from workbench.workspace import Workspace

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
    page.wait_for_selector("#compare-panels figure")


def _checked_methods(page):
    return page.locator("#compare-methods input[type=checkbox]:checked").count()


def _assert_panels_read_at_a_glance(page, n):
    """Every panel whole and on screen at its image's aspect ratio, its caption in full (never
    cut or scrolled), a colour bar with both end values and a unit under each."""
    info = page.evaluate(
        """() => [...document.querySelectorAll('#compare-panels figure')].map(f => {
            const img = f.querySelector('img'), cap = f.querySelector('figcaption');
            const r = img.getBoundingClientRect(), c = cap.getBoundingClientRect();
            const bar = f.querySelector('.anomseg-cbar-ramp').getBoundingClientRect();
            const st = getComputedStyle(cap);
            return {w: r.width, h: r.height, nw: img.naturalWidth, nh: img.naturalHeight,
                    right: Math.max(r.right, c.right), vw: document.documentElement.clientWidth,
                    capScroll: cap.scrollWidth - cap.clientWidth, capH: c.height,
                    overflow: st.overflow + st.textOverflow + st.whiteSpace,
                    bar: bar.width, lo: f.querySelector('.anomseg-cbar-lo').innerText,
                    hi: f.querySelector('.anomseg-cbar-hi').innerText,
                    unit: f.querySelector('.anomseg-cbar-unit').innerText,
                    cap: cap.innerText};
        })"""
    )
    assert len(info) == n
    for p in info:
        assert p["nw"] > 0 and abs(p["h"] / p["w"] - p["nh"] / p["nw"]) < 0.02, p  # no letterbox
        assert p["right"] <= p["vw"] + 1, p  # nothing cut off at the right
        assert p["capScroll"] <= 0 and p["capH"] > 0 and "ellipsis" not in p["overflow"], p
        assert "…" not in p["cap"] and "AuPRC" in p["cap"] and "FPR95" in p["cap"], p
        assert p["bar"] > 50 and p["lo"] and p["hi"] and p["lo"] != p["hi"] and p["unit"], p
    # the panel box never scrolls by itself: its content is as tall as it is
    scroll = page.evaluate(
        "() => { const e = document.querySelector('#compare-panels');"
        " return e.scrollHeight - e.clientHeight; }"
    )
    assert scroll <= 1


def _header_text(page):
    return page.locator("#anomseg-status").inner_text()


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
        f"document.querySelectorAll('#compare-panels figure').length == {n_methods}"
    )
    captions = page.locator("#compare-panels figcaption").all_inner_texts()
    assert len(captions) == n_methods and all("AuPRC" in c and "FPR95" in c for c in captions)
    _assert_panels_read_at_a_glance(page, n_methods)
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
    from dashboard.wording import counted

    ws, url = app_server
    ctx, page = _open(browser, url)
    _compare_first_image(page)
    before = _flags(ws)
    page.wait_for_function(
        "(t) => document.querySelector('#anomseg-status').innerText.includes(t)",
        arg=f"· {counted(len(before), 'flag')} ·",  # "1 flag", "2 flags"
    )
    _load_flag_editor(page)
    _paint(page)
    page.locator("#flag-note textarea").fill("browser test")
    page.locator("#flag-save").click()
    page.wait_for_function(
        "document.querySelector('#flag-status').innerText.includes('Saved flag')"
    )
    after = _flags(ws)
    assert len(after) == len(before) + 1
    # the header's count follows without a reload
    page.wait_for_function(
        "(t) => document.querySelector('#anomseg-status').innerText.includes(t)",
        arg=f"· {counted(len(after), 'flag')} ·",  # "1 flag", "2 flags"
    )
    new = [f for f in after if f not in before][0]
    assert new[1] == "false_positive" and new[3] > 100
    # the new flag is listed under the editor and in the list of all flags
    _cell(page, "flag-table", 0, 0)
    assert str(new[0]) in page.locator("#flag-table").inner_text()
    _cell(page, "flag-all", 0, 0)
    page.wait_for_function(
        "(i) => document.querySelector('#flag-all').innerText.includes(i)", arg=str(new[0])
    )
    # the editor says which image and method it shows
    image_id = page.locator("#compare-image-id input").input_value()
    info = page.locator("#flag-editor-info").inner_text()
    assert f"#{image_id} " in info and "map of" in info, info
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
    # the reason names the user's file, never the server's temporary copy, and the upload box
    # is not left in an error state
    page.wait_for_function(
        "document.querySelector('#compare-image-info').innerText.includes('not a readable')"
    )
    info = page.locator("#compare-image-info").inner_text()
    assert "notes.png" in info and "/tmp" not in info and "gradio" not in info, info
    assert "Error" not in page.locator("#compare-upload").inner_text()
    # a good upload keeps the user's file name
    from PIL import Image

    good = tmp_path / "my street.png"
    Image.new("RGB", (96, 48), (90, 90, 90)).save(good)
    page.locator("#compare-upload input[type=file]").set_input_files(str(good))
    page.wait_for_function(
        "document.querySelector('#compare-image-info').innerText.includes('my_street.png')"
    )
    ctx.close()


def test_full_size_view_always_shows_the_selected_image(app_server, browser):
    """Open image A, open a panel's full-size view, then pick image B: the full-size view is
    B's (its pixels equal the services' rendering of B, not of A)."""
    import io

    import numpy as np
    from PIL import Image

    from dashboard.services import Services
    from dashboard.services.compare import CompareStyle

    ws, url = app_server
    ctx, page = _open(browser, url)
    _compare_first_image(page)
    page.locator("#compare-panels figure").first.click()
    page.wait_for_function(
        "document.querySelector('#compare-full-info').innerText.includes('Full-size view')"
    )
    method = page.locator("#compare-panels figure").first.get_attribute("data-method")
    image_a = int(page.locator("#compare-image-id input").input_value())
    assert f"#{image_a} " in page.locator("#compare-full-info").inner_text()
    page.locator("#compare-gallery .thumbnail-item").nth(1).click()
    page.wait_for_function(
        "(v) => document.querySelector('#compare-image-id input').value !== v", arg=str(image_a)
    )
    image_b = int(page.locator("#compare-image-id input").input_value())
    # (innerText also holds a loading timer while an event runs: wait for the final text)
    page.wait_for_function(
        "(t) => document.querySelector('#compare-full-info').innerText.includes(t)",
        arg=f"#{image_b} ",
    )
    assert f"#{image_b} " in page.locator("#compare-full-info").inner_text()
    page.wait_for_function(
        "document.querySelector('#compare-full img') &&"
        " document.querySelector('#compare-full img').naturalWidth > 0"
    )
    src = page.locator("#compare-full img").get_attribute("src")
    shown = np.asarray(Image.open(io.BytesIO(page.request.get(src).body())).convert("RGB"))
    svc = Services(ws)
    model = page.locator("#compare-model input").input_value()
    names = [f.get_attribute("data-method") for f in page.locator("#compare-panels figure").all()]

    def rendering(image_id):
        view = svc.scores.load_view(model, image_id)
        maps = svc.scores.score_maps(model, view, names)
        vr = svc.compare.colour_ranges(svc.catalog.model_key(model), view, maps, False)[method]
        return svc.compare.full_view(model, image_id, method, None, CompareStyle(), vrange=vr)

    want_b, want_a = rendering(image_b), rendering(image_a)
    assert shown.shape == want_b.shape
    d_b = np.abs(shown.astype(int) - want_b.astype(int)).mean()
    d_a = np.abs(shown.astype(int) - want_a.astype(int)).mean()
    # B's rendering up to JPEG noise (and the demo EoMT's near-flat maps, whose colour range is
    # a few thousandths wide, so that float noise moves colours); far from A's
    assert d_b < 12 and d_b < d_a / 2, (d_b, d_a)
    ctx.close()


def test_models_and_datasets_registered_while_running_appear_after_reload(
    app_server, browser, tmp_path
):
    import numpy as np
    from PIL import Image

    ws, url = app_server
    ctx, page = _open(browser, url)
    # registered from "another shell" while the page is open
    root = tmp_path / "late-bench"
    (root / "images").mkdir(parents=True)
    (root / "labels_masks").mkdir()
    for i in range(2):
        Image.new("RGB", (64, 32), (100 + i, 90, 80)).save(root / "images" / f"{i}.png")
        lab = np.zeros((32, 64), np.uint8)
        lab[10:20, 20:30] = 1
        Image.fromarray(lab).save(root / "labels_masks" / f"{i}.png")
    ws.register_benchmark("late-bench", root, role="eval")
    ws.register_checkpoint("late-erfnet", "erfnet", None, input_size=(128, 256))
    page.reload(wait_until="load")
    page.wait_for_selector("#compare-gallery .thumbnail-item")
    for elem, text in (("compare-model", "late-erfnet"), ("compare-dataset", "late-bench")):
        page.locator(f"#{elem} input").click()
        page.locator("[role=option]", has_text=text).first.wait_for()
        page.keyboard.press("Escape")
    # and it can be picked: the new dataset's images show up in the gallery
    box = page.locator("#compare-dataset input")
    box.click()
    box.fill("late-bench")
    page.locator("[role=option]", has_text="late-bench").first.wait_for()
    page.wait_for_timeout(300)
    box.press("Enter")  # the only match
    page.wait_for_function(
        "document.querySelectorAll('#compare-gallery .thumbnail-item').length == 2"
    )
    # the Leaderboard's model lists were re-read on that load too
    _tab(page, "Leaderboard")
    for elem in ("lb-models", "lb-eval-model", "lb-head-model"):
        page.locator(f"#{elem} input").click()
        page.locator("[role=option]", has_text="late-erfnet").first.wait_for()
        page.keyboard.press("Escape")
    ctx.close()


def test_retrain_tab_starts_from_train_config_defaults(app_server, browser):
    from training.trainer import TrainConfig

    _ws, url = app_server
    ctx, page = _open(browser, url)
    _tab(page, "Retrain")
    d = TrainConfig()
    assert float(page.locator("#retrain-lr input").input_value()) == d.lr
    assert float(page.locator("#retrain-epochs input[type=number]").input_value()) == d.epochs
    assert (
        float(page.locator("#retrain-fp-weight input[type=number]").input_value()) == d.fp_weight
    )
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
    bg = svc.curate._background(sample_id)
    for cand in candidates:
        try:
            svc.curate.check_placement(bg, cand)
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
        for o in svc.curate.object_choices(rec1.source, limit=2000)
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

    # 4) a move off the road is refused with a message, nothing stored; the last good preview
    # and paste table stay, the reason is in the status line, no output turns into "Error"
    sky = rec3.replace(y=5 + 1)
    src = page.locator("#curate-preview img").get_attribute("src")
    table_before = page.locator("#curate-pastes").inner_text()
    page.mouse.click(*_img_point(page, "#curate-preview img", sky.x, sky.y))
    page.wait_for_function(
        "document.querySelector('#curate-status').innerText.includes('off the')"
    )
    assert _paste_state(ws, sample_id) == (rec3, n3)
    page.wait_for_timeout(500)
    assert page.locator("#curate-preview img").get_attribute("src") == src
    assert page.locator("#curate-pastes").inner_text() == table_before
    for elem in ("#curate-preview", "#curate-pastes", "#curate-status"):
        assert "Error" not in page.locator(elem).inner_text(), elem
    ctx.close()


def test_curate_list_shows_each_samples_own_thumbnail(app_server, browser):
    """Every listed sample (with a render) shows a loaded thumbnail in its row, and it is that
    sample's picture: close to a box-filter shrink of its render-cache file, far from others'."""
    import base64
    import io

    import numpy as np
    from PIL import Image

    from db import pastes as dbpastes

    ws, url = app_server
    ctx, page = _open(browser, url)
    _tab(page, "Curate")
    _cell(page, "curate-samples", 0, 1)
    page.wait_for_function(
        "[...document.querySelectorAll('#curate-samples img.curate-thumb')]"
        ".some(i => i.complete && i.naturalWidth > 0)"
    )
    rows = page.evaluate(
        """() => [...document.querySelectorAll('#curate-samples img.curate-thumb')].map(i => {
            const r = i.getBoundingClientRect(), cell = i.closest('[role=gridcell]');
            const id = cell && cell.parentElement.querySelector(
                `[role=gridcell][data-row="${cell.dataset.row}"][data-col="1"]`);
            return {sid: +i.dataset.sample, src: i.getAttribute('src'), nw: i.naturalWidth,
                    w: r.width, h: r.height, id: id ? id.innerText.trim() : '',
                    sizing: !cell};  // the table's hidden sizing copy has no grid cells
        })"""
    )
    with ws.store.read() as s:
        renders = {
            smp.id: Path(smp.dataset.root) / smp.render["image"]
            for smp in dbpastes.list_samples(s)
            if smp.render and smp.render.get("image")
        }
    shown = page.evaluate(
        """() => [...document.querySelectorAll('#curate-samples [role=gridcell][data-col="1"]')]
            .map(c => +c.innerText.trim())"""
    )
    # every sample row on screen that has a render shows its thumbnail (the table draws some
    # rows twice: a hidden copy measures column widths)
    rows = [r for r in rows if not r["sizing"]]
    assert rows and {r["sid"] for r in rows} == {i for i in shown if i in renders}

    def picture(sid, size):
        im = Image.open(renders[sid]).convert("RGB").resize(size[::-1], Image.BOX)
        return np.asarray(im, dtype=float)

    for r in rows[:4]:
        assert r["nw"] > 0 and r["w"] > 8 and r["h"] > 8, r  # loaded and visible
        assert r["id"] == str(r["sid"]), r["id"]  # in its own sample's row
        thumb = np.asarray(
            Image.open(io.BytesIO(base64.b64decode(r["src"].split(",", 1)[1]))).convert("RGB"),
            dtype=float,
        )
        own = np.abs(thumb - picture(r["sid"], thumb.shape[:2])).mean()
        others = [
            np.abs(thumb - picture(o, thumb.shape[:2])).mean()
            for o in list(renders)[:6]
            if o != r["sid"]
        ]
        assert own < 10.0 and all(d > own for d in others), (r["sid"], own, others)
    ctx.close()


def test_retrain_runs_and_the_new_head_appears_everywhere(app_server, browser):
    ws, url = app_server
    ctx, page = _open(browser, url)
    _tab(page, "Curate")
    _cell(page, "curate-samples", 0, 1)
    _tab(page, "Retrain")
    page.locator("#retrain-summary table").wait_for()
    # before any version: the history shows its real columns, not a placeholder "1 2 3"
    assert "version" in page.locator("#retrain-history").inner_text()
    t0 = time.monotonic()
    page.locator("#retrain-go").click()
    page.wait_for_function(
        "document.querySelector('#retrain-job-status').innerText.match(/: (done|failed|cancelled)/)",
        timeout=180_000,
    )
    status = page.locator("#retrain-job-status").inner_text()
    assert "done" in status, status
    assert time.monotonic() - t0 < 180
    # the header names the new active head without a reload
    page.wait_for_function(
        "document.querySelector('#anomseg-status').innerText.includes('head v1')"
    )
    # history table lists v1 as active
    _cell(page, "retrain-history", 0, 0)
    assert "●" in page.locator("#retrain-history").inner_text()
    # Compare now offers the head version, ticked, and shows its panel
    _tab(page, "Compare")
    page.locator("#compare-methods").get_by_text("Head v1").wait_for()
    n_methods = _checked_methods(page)
    _compare_first_image(page)
    page.wait_for_function(
        f"document.querySelectorAll('#compare-panels figure').length == {n_methods}"
    )
    assert any(
        "Head v1" in c for c in page.locator("#compare-panels figcaption").all_inner_texts()
    )
    # and the leaderboard holds its evaluation, under the name Compare gives it
    _tab(page, "Leaderboard")
    cell = page.locator("#lb-table [role=gridcell]", has_text="Head v1").first
    cell.wait_for()
    # its worst images say which method and how bad
    cell.click()
    page.locator("#lb-worst").get_by_text(
        re.compile(r"AuPRC (\d+\.\d|n/a) · Head v1 · ")
    ).first.wait_for()
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
