"""Compare's panel grid (HTML), colour bars, units and ignore regions, against hand computations."""

from __future__ import annotations

import re

import numpy as np
import pytest

from dashboard import panels, render, scales


def _card(method="msp", label="MSP", auprc=0.2876, fpr95=0.6699, thr=None, vmin=0.1, vmax=0.9):
    img = np.full((20, 40, 3), 90, np.uint8)
    unit = scales.scale_of(method).unit
    return panels.PanelCard(method, label, img, vmin, vmax, unit, auprc, fpr95, thr)


def test_every_panel_has_its_full_caption_colour_bar_and_unit():
    cards = [_card(), _card("energy", "Energy", 0.41, 0.62, thr=-7.25, vmin=-11.8, vmax=-2.3)]
    html = panels.panels_html(cards, "inferno", 0.9, legend="legend text")
    figs = re.findall(r"<figure.*?</figure>", html, flags=re.S)
    assert len(figs) == 2
    caps = re.findall(r"<figcaption>(.*?)</figcaption>", html)
    assert caps == [
        "MSP · AuPRC 28.8 % · FPR95 67.0 %",
        "Energy · AuPRC 41.0 % · FPR95 62.0 % · threshold -7.25",
    ]
    assert "…" not in html
    assert html.count('class="anomseg-cbar-ramp"') == 2
    assert "1 − max softmax prob." in html and "logit units" in html
    assert re.findall(r'data-method="([^"]+)"', html) == ["msp", "energy"]
    # the image keeps its own aspect ratio: width and height attributes of the map itself
    assert html.count('width="40" height="20"') == 2
    assert "legend text" in html


def test_panel_text_is_escaped():
    html = panels.panels_html([_card("head:1", "Head <v1>")], "inferno", 0.9)
    assert "Head &lt;v1&gt;" in html and "<v1>" not in html


def test_missing_figures_read_n_a_not_an_empty_caption():
    assert _card(auprc=None, fpr95=None).caption() == "MSP · AuPRC n/a · FPR95 n/a"


def test_bar_labels_use_enough_digits_to_differ():
    assert panels.bar_labels(0.9456, 0.9474) == ("0.946", "0.947")
    lo, hi = panels.bar_labels(0.94561, 0.94567)
    assert (lo, hi) == ("0.9456", "0.9457")  # 4 digits are the first that differ
    assert panels.bar_labels(-0.0, 1.0) == ("0", "1")


def test_colour_bar_stops_are_what_a_panel_draws_over_grey():
    # an independent render: a ramp of scores from vmin to vmax over a uniform grey image
    n = 11
    score = np.linspace(2.0, 5.0, n, dtype=np.float32)[None, :]
    grey = np.full((1, n, 3), 128, np.uint8)
    out = render.render_panel(
        grey, score, render.PanelStyle(opacity=0.7, vmin=2.0, vmax=5.0, show_gt=False)
    )
    stops = render.colorbar_stops("inferno", 0.7, n=n)
    for k in range(n):
        assert np.abs(out[0, k].astype(int) - np.array(stops[k])).max() <= 3  # LUT rounding


def test_low_scores_leave_the_image_and_high_scores_take_the_colour():
    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[..., 0] = 200  # a red image: its grey copy has luma 0.299 * 200
    score = np.array([[0.0, 0.0], [1.0, 1.0]], np.float32)
    out = render.render_panel(rgb, score, render.PanelStyle(opacity=1.0, show_gt=False))
    assert tuple(out[0, 0]) == (60, 60, 60)  # round(0.299 * 200)
    assert tuple(out[1, 0]) == tuple(render.COLORMAPS.get("inferno")[-1])


def test_ignore_region_is_darkened_and_never_coloured():
    rgb = np.full((4, 4, 3), 100, np.uint8)
    score = np.ones((4, 4), np.float32)
    gt = np.zeros((4, 4), np.uint8)
    gt[:, :2] = 255
    out = render.render_panel(rgb, score, render.PanelStyle(opacity=1.0), gt)
    assert np.all(out[:, :2] == round(100 * render.IGNORE_DIM))
    assert tuple(out[0, 3]) == tuple(render.COLORMAPS.get("inferno")[-1])


def test_colour_range_leaves_out_ignored_pixels():
    rng = np.random.default_rng(1)
    s = rng.normal(size=(50, 60)).astype(np.float32)
    valid = np.zeros_like(s, bool)
    valid[10:30, 5:40] = True
    s[~valid] += 100.0  # huge scores off the evaluated region must not stretch the range
    lo, hi = render.robust_range(s, 50, 99.5, valid=valid)
    assert lo == pytest.approx(np.percentile(s[valid], 50), rel=1e-5)
    assert hi == pytest.approx(np.percentile(s[valid], 99.5), rel=1e-5)


def test_shared_ranges_join_only_methods_of_one_kind():
    ranges = {"maxlogit": (-9.0, -3.0), "energy": (-12.0, -5.0), "entropy": (0.1, 0.7)}
    groups = {n: scales.scale_of(n).kind for n in ranges}
    out = render.share_ranges(ranges, groups)
    assert out["maxlogit"] == out["energy"] == (-12.0, -3.0)
    assert out["entropy"] == (0.1, 0.7)


def test_every_scorer_the_app_lists_has_a_unit():
    from anomseg import scoring

    for spec in scoring.list_scorers():
        if ":" not in spec.name:
            assert spec.name in scales.SCALES, spec.name
    assert scales.scale_of("head:1").kind == scales.scale_of("head:7").kind
    assert scales.scale_of("msp").kind != scales.scale_of("entropy").kind
