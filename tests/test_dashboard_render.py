"""Rendering helpers of the dashboard, checked against independent hand computations."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dashboard import render


def test_colorize_endpoints_follow_the_colour_map():
    lut = render.COLORMAPS.get("inferno")
    score = np.array([[-5.0, 0.0, 1.0, 9.0]], dtype=np.float32)
    out = render.colorize(score, 0.0, 1.0, "inferno")
    # below vmin clips to the first colour, above vmax to the last
    assert tuple(out[0, 0]) == tuple(lut[0]) == tuple(out[0, 1])
    assert tuple(out[0, 2]) == tuple(lut[-1]) == tuple(out[0, 3])
    # plotly's inferno starts black-ish and ends pale yellow
    assert lut[0].sum() < 30 and lut[-1].min() > 150


def test_colorize_midpoint_is_the_middle_entry():
    lut = render.COLORMAPS.get("viridis")
    out = render.colorize(np.array([[0.5]]), 0.0, 1.0, "viridis")
    assert tuple(out[0, 0]) == tuple(lut[round(0.5 * 255)])


def test_colorize_handles_nan_and_degenerate_range():
    out = render.colorize(np.array([[np.nan, 3.0]]), 3.0, 3.0)
    assert out.shape == (1, 2, 3) and out.dtype == np.uint8


def test_unknown_colour_map_is_a_clear_error():
    from anomseg.errors import InputError

    with pytest.raises(InputError, match="colour map 'nope'"):
        render.colorize(np.zeros((2, 2)), 0, 1, "nope")


def test_robust_range_matches_numpy_percentiles():
    rng = np.random.default_rng(0)
    s = rng.normal(size=(64, 64)).astype(np.float32)
    lo, hi = render.robust_range(s, 2, 98)
    assert lo == pytest.approx(np.percentile(s, 2), rel=1e-5)
    assert hi == pytest.approx(np.percentile(s, 98), rel=1e-5)


def test_shared_colour_ranges_cover_every_map():
    a = np.linspace(0, 1, 100).reshape(10, 10)
    b = np.linspace(5, 10, 100).reshape(10, 10)
    own = render.color_ranges({"a": a, "b": b}, shared=False, lo_pct=0, hi_pct=100)
    assert own["a"] == pytest.approx((0, 1)) and own["b"] == pytest.approx((5, 10))
    shared = render.color_ranges({"a": a, "b": b}, shared=True, lo_pct=0, hi_pct=100)
    assert shared["a"] == shared["b"] == pytest.approx((0, 10))


def test_outline_of_a_square_is_its_border():
    m = np.zeros((8, 8), bool)
    m[2:6, 2:6] = True
    edge = render.outline(m, 1)
    expected = m.copy()
    expected[3:5, 3:5] = False
    assert np.array_equal(edge, expected)
    # a mask touching the frame keeps its frame-side edge pixels inside the mask only
    full = np.ones((4, 4), bool)
    assert render.outline(full, 1).sum() == 12


def test_resize_labels_nearest_keeps_values():
    lab = np.array([[0, 1], [255, 1]], dtype=np.uint8)
    big = render.resize_labels(lab, (4, 4))
    assert set(np.unique(big)) == {0, 1, 255}
    assert np.array_equal(big[:2, :2], np.zeros((2, 2)))
    assert np.array_equal(big[2:, :2], np.full((2, 2), 255))


def test_fit_size_keeps_aspect():
    (h, w), s = render.fit_size((1024, 2048), 1024)
    assert (h, w) == (512, 1024) and s == 0.5
    assert render.fit_size((100, 200), 1024) == ((100, 200), 1.0)


def test_render_panel_blends_with_opacity_and_marks_gt():
    rgb = np.full((6, 6, 3), 100, np.uint8)
    score = np.zeros((6, 6), np.float32)
    score[:, 3:] = 1.0
    gt = np.zeros((6, 6), np.uint8)
    gt[1:5, 1:5] = 1
    style = render.PanelStyle(opacity=0.5, vmin=0, vmax=1, cmap="inferno", show_gt=False)
    out = render.render_panel(rgb, score, style)
    top = render.COLORMAPS.get("inferno")[-1].astype(float)
    expect = np.rint(100 * 0.5 + top * 0.5)
    assert np.array_equal(out[0, 5], expect)
    # GT outline pixels take the GT colour; interior pixels do not
    out2 = render.render_panel(rgb, score, render.PanelStyle(opacity=0.0, show_gt=True), gt)
    assert tuple(out2[1, 1]) == render.GT_COLOR
    assert tuple(out2[0, 0]) == (100, 100, 100)


def test_threshold_shows_heat_only_above_it():
    rgb = np.full((4, 8, 3), 50, np.uint8)
    score = np.tile(np.linspace(0, 1, 8, dtype=np.float32), (4, 1))
    style = render.PanelStyle(opacity=1.0, vmin=0, vmax=1, threshold=0.5, show_gt=False)
    out = render.render_panel(rgb, score, style)
    below = score < 0.5
    assert np.all(out[below] == 50)
    # above the threshold the heat colour replaces the image (opacity 1), except the outline
    lut = render.COLORMAPS.get("inferno")
    assert tuple(out[1, 6]) == tuple(lut[round(score[1, 6] * 255)])
    assert tuple(out[0, 4]) == render.THRESHOLD_COLOR


def test_render_panel_refuses_mismatched_sizes():
    with pytest.raises(ValueError, match="differ in size"):
        render.render_panel(np.zeros((4, 4, 3), np.uint8), np.zeros((4, 5)), render.PanelStyle())


def test_flag_overlay_tints_only_the_mask():
    rgb = np.zeros((20, 20, 3), np.uint8)
    m = np.zeros((20, 20), bool)
    m[4:14, 4:14] = True
    out = render.flag_overlay(rgb, [("fp", m)], alpha=0.5)
    assert out[~m].sum() == 0
    assert tuple(out[4, 4]) == render.FLAG_COLORS["fp"]  # outline pixel
    assert out[9, 9, 0] == round(255 * 0.5)  # interior: half-way tint


def test_plots_build_from_frames():
    df = pd.DataFrame(
        {
            "model": ["a", "a", "b", "b"],
            "method": ["msp", "energy", "msp", "energy"],
            "dataset": ["d1", "d1", "d1", "d1"],
            "AuPRC": [10.0, 20.0, 30.0, 40.0],
        }
    )
    fig = render.metric_bars(df, "AuPRC")
    ys = sorted(float(y) for tr in fig.data for y in tr.y)
    assert ys == [10.0, 20.0, 30.0, 40.0]
    assert {tr.name for tr in fig.data} == {"a", "b"}
    empty = render.metric_bars(pd.DataFrame(), "AuPRC")
    assert "no results" in empty.layout.annotations[0].text
    pr = render.pr_curves([("msp", np.array([0, 1.0]), np.array([1.0, 0.2]))])
    assert list(pr.data[0].x) == [0, 1.0]
