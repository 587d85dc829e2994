"""One PNG per tab of a running dashboard, for the README (``anomseg serve --screenshots DIR``).

Drives Debian's chromium through Playwright: opens the app (logging in when ``auth`` is given),
opens the first evaluation image in Compare, loads a map into the Flag editor, opens a sample in
Curate, and clicks the first leaderboard row, saving a picture of each tab.
"""

from __future__ import annotations

from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1440, "height": 1000}


def login(page, auth: tuple[str, str]) -> None:
    """Fill Gradio's login form."""
    page.locator("input[type=text]").first.fill(auth[0])
    page.locator("input[type=password]").first.fill(auth[1])
    page.locator("button", has_text="Login").first.click()
    page.wait_for_selector("#tab-compare, [role=tab]", timeout=60_000)


def cell(page, elem_id: str, row: int, col: int, timeout: float = 60_000):
    """A cell of a gr.Dataframe (Gradio renders rows virtually; cells carry a test id)."""
    loc = page.locator(f'#{elem_id} [data-testid="cell-{row}-{col}"]').first
    loc.wait_for(timeout=timeout)
    return loc


# the README's Compare picture: the demo model whose maps find the pastes (the demo EoMT's are
# nearly flat, see the README's demo-model table); any other workspace keeps its first model
SHOWCASE_MODEL = "demo-erfnet"


def pick_model(page, name: str) -> None:
    """Choose ``name`` in Compare's model list when it is there (type it, take the match)."""
    box = page.locator("#compare-model input")
    if box.input_value() == name:
        return
    box.click()
    box.fill(name)
    option = page.locator("[role=option]", has_text=name)
    try:
        option.first.wait_for(timeout=5_000)
    except Exception:  # not registered here: keep the default
        page.keyboard.press("Escape")
        return
    page.wait_for_timeout(300)
    box.press("Enter")
    page.wait_for_timeout(1500)


def open_tab(page, name: str) -> None:
    """Click a top-level tab by its label."""
    page.get_by_role("tab", name=name).click()
    page.wait_for_timeout(800)


def take_screenshots(
    url: str, out_dir: str | Path, auth: tuple[str, str] | None = None
) -> list[Path]:
    """Write compare.png, flag.png, curate.png, retrain.png, leaderboard.png into ``out_dir``."""
    from playwright.sync_api import sync_playwright

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport=VIEWPORT, device_scale_factor=1)
        page.goto(url, wait_until="load", timeout=120_000)
        if auth:
            login(page, auth)
        page.wait_for_selector("#compare-gallery .thumbnail-item", timeout=120_000)
        pick_model(page, SHOWCASE_MODEL)
        page.locator("#compare-gallery .thumbnail-item").first.click()
        page.wait_for_selector("#compare-panels figure", timeout=120_000)
        page.locator("#compare-panels figure").first.click()
        page.wait_for_selector("#compare-full img", timeout=60_000)
        page.wait_for_timeout(1000)
        paths.append(_shot(page, out / "compare.png"))

        open_tab(page, "Flag")
        page.locator("#flag-load").click()
        page.wait_for_selector("#flag-editor canvas", timeout=60_000)
        page.wait_for_timeout(2000)
        paths.append(_shot(page, out / "flag.png"))

        open_tab(page, "Curate")
        cell(page, "curate-samples", 0, 1).click()
        page.wait_for_selector("#curate-preview img", timeout=60_000)
        page.wait_for_timeout(1000)
        paths.append(_shot(page, out / "curate.png"))

        open_tab(page, "Retrain")
        page.wait_for_timeout(1500)
        paths.append(_shot(page, out / "retrain.png"))

        open_tab(page, "Leaderboard")
        try:
            cell(page, "lb-table", 0, 1, timeout=30_000).click()
            page.wait_for_selector("#lb-worst .thumbnail-item", timeout=60_000)
        except Exception:  # an empty leaderboard is still worth a picture
            pass
        page.wait_for_timeout(1500)
        paths.append(_shot(page, out / "leaderboard.png"))
        browser.close()
    return paths


def _shot(page, path: Path, width: int = 1200) -> Path:
    """A full-page PNG, scaled to ``width`` and reduced to 256 colours (README-sized)."""
    import io

    from PIL import Image

    im = Image.open(io.BytesIO(page.screenshot(full_page=True))).convert("RGB")
    if im.width > width:
        im = im.resize((width, round(im.height * width / im.width)), Image.LANCZOS)
    im.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
        path, format="PNG", optimize=True
    )
    return path
