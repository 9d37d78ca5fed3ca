"""Sentence windows and gaze heatmaps, checked against hand-computed values."""

import math

import numpy as np
import pytest

from egma_hf.data.heatmaps import Fixations, group_words_into_sentences, heatmap_shape, render_heatmaps


def fixations(points, sigma=None, box=None):
    """points: (x, y, start, end) tuples."""
    x, y, start, end = (np.array(column, dtype=np.float64) for column in zip(*points))
    sig = None if sigma is None else np.full(len(x), float(sigma))
    return Fixations(x, y, start, end, sig, sig, None if box is None else np.tile(np.array(box, float), (len(x), 1)))


def test_words_group_into_sentences_with_punctuation_rows():
    words = ["There", "is", "opacity", ".", "No", "effusion", ",", "no", "pneumothorax", ".", "Stable"]
    starts = [0.0, 0.3, 0.5, 0.9, 2.0, 2.2, 2.6, 2.7, 2.9, 3.5, 5.0]
    ends = [0.3, 0.5, 0.9, 0.9, 2.2, 2.6, 2.6, 2.9, 3.5, 3.5, 5.5]
    sentences = group_words_into_sentences(words, starts, ends)
    assert [s.text for s in sentences] == ["There is opacity.", "No effusion, no pneumothorax.", "Stable"]
    assert [(s.start, s.end) for s in sentences] == [(0.0, 0.9), (2.0, 3.5), (5.0, 5.5)]


def test_words_ending_before_they_start_are_an_error():
    with pytest.raises(ValueError, match=r"word 1 \('is'\) ends at 0.2 s before it starts at 0.3 s"):
        group_words_into_sentences(["There", "is"], [0.0, 0.3], [0.3, 0.2])


def test_heatmap_shape_keeps_aspect_ratio():
    assert heatmap_shape((3000, 2500), 64) == (64, 53)
    assert heatmap_shape((2000, 4000), 64) == (32, 64)


def test_known_fixation_peaks_at_its_pixel_in_its_sentence_only():
    points = fixations([(48, 12, 2.1, 2.7), (10, 36, 0.2, 1.2)])
    maps = render_heatmaps(points, [(0.0, 1.5), (2.0, 3.0), (4.0, 5.0)], (48, 64), (48, 64), recipe="egd")
    assert maps.shape == (3, 48, 64) and maps.dtype == np.float32
    assert np.unravel_index(maps[0].argmax(), maps[0].shape) == (36, 10)
    assert np.unravel_index(maps[1].argmax(), maps[1].shape) == (12, 48)
    assert maps[0].max() == pytest.approx(1.0) and maps[1].max() == pytest.approx(1.0)
    assert not maps[2].any()  # nobody looked during the third sentence
    alone = render_heatmaps(fixations([(48, 12, 2.1, 2.7)]), [(2.0, 3.0)], (48, 64), (48, 64), recipe="egd")
    np.testing.assert_allclose(maps[1], alone[0], atol=1e-6)  # the other sentence's fixation adds nothing


def test_gaussian_value_and_coordinates_at_reduced_resolution():
    # 400x400 image, 40x40 map: map pixel (r, c) is centred on image pixel (10r + 4.5, 10c + 4.5)
    points = fixations([(205, 105, 0.0, 1.0), (5, 5, 0.0, 0.1)])
    maps = render_heatmaps(points, [(0.0, 1.0)], (400, 400), (40, 40), recipe="egd")
    heat = lambda px, py: (math.exp(-0.5 * ((px - 205) ** 2 + (py - 105) ** 2) / 150**2)  # noqa: E731
                           + 0.1 * math.exp(-0.5 * ((px - 5) ** 2 + (py - 5) ** 2) / 150**2))
    grid = np.array([[heat(10 * c + 4.5, 10 * r + 4.5) for c in range(40)] for r in range(40)])
    np.testing.assert_allclose(maps[0], grid / grid.max(), rtol=1e-5)


def test_fixations_are_weighted_by_their_overlap_with_the_window():
    # 1 s fully inside vs 2 s of which 1 s inside: equal weights, equal peaks (well separated, narrow sigma)
    points = fixations([(100, 100, 0.0, 1.0), (300, 300, 0.5, 2.5)], sigma=5)
    maps = render_heatmaps(points, [(0.0, 1.5)], (400, 400), (400, 400), recipe="reflacx")
    assert maps[0][100, 100] == pytest.approx(maps[0][300, 300], rel=1e-3)
    later = render_heatmaps(points, [(0.0, 1.0)], (400, 400), (400, 400), recipe="reflacx")
    assert later[0][300, 300] == pytest.approx(0.5 * later[0][100, 100], rel=1e-3)


def test_gaze_lead_shifts_the_window_earlier():
    points = fixations([(20, 20, 0.0, 0.5), (80, 80, 1.0, 1.5)], sigma=3)
    on_time = render_heatmaps(points, [(0.8, 1.6)], (100, 100), (100, 100), recipe="reflacx")
    leading = render_heatmaps(points, [(0.8, 1.6)], (100, 100), (100, 100), recipe="reflacx", gaze_lead=0.8)
    assert on_time[0].argmax() == np.ravel_multi_index((80, 80), (100, 100))
    assert leading[0].argmax() == np.ravel_multi_index((20, 20), (100, 100))


def test_reflacx_gaussians_stop_at_the_shown_part_of_the_image():
    points = fixations([(50, 50, 0.0, 1.0)], sigma=20, box=(40, 0, 100, 100))  # zoomed: x < 40 not on screen
    maps = render_heatmaps(points, [(0.0, 1.0)], (100, 100), (100, 100), recipe="reflacx")
    assert not maps[0][:, :40].any() and maps[0][50, 45] > 0.9


def test_whole_reading_window_and_empty_input():
    points = fixations([(10, 10, 0.0, 0.2), (90, 90, 5.0, 6.0)], sigma=2)
    whole = render_heatmaps(points, [(-math.inf, math.inf)], (100, 100), (100, 100), recipe="reflacx")
    assert whole[0][90, 90] == pytest.approx(1.0) and whole[0][10, 10] == pytest.approx(0.2, rel=1e-3)
    empty = render_heatmaps(fixations([(1, 1, 0, 1)]).select(np.array([False])), [(0, 1)], (10, 10), (5, 5))
    assert empty.shape == (1, 5, 5) and not empty.any()


def test_recipe_errors():
    with pytest.raises(ValueError, match="recipe must be one of"):
        render_heatmaps(fixations([(1, 1, 0, 1)]), [(0, 1)], (10, 10), (5, 5), recipe="gauss")
    with pytest.raises(ValueError, match="sigma in pixels and must be > 0"):
        render_heatmaps(fixations([(1, 1, 0, 1)]), [(0, 1)], (10, 10), (5, 5), recipe=0.0)
    fixed = render_heatmaps(fixations([(5, 5, 0, 1)]), [(0, 1)], (10, 10), (10, 10), recipe=2.0)
    np.testing.assert_allclose(fixed[0, 5, 7], np.exp(-0.5 * (2 / 2.0) ** 2), rtol=1e-6)
    with pytest.raises(ValueError, match="pixels per degree"):
        render_heatmaps(fixations([(1, 1, 0, 1)]), [(0, 1)], (10, 10), (5, 5), recipe="reflacx")


def test_overlay_png_has_one_panel_per_sentence(tmp_path):
    from PIL import Image

    from egma_hf.visualization import plot_sentence_heatmaps

    image = np.linspace(0, 1, 60 * 80, dtype=np.float32).reshape(60, 80)
    maps = render_heatmaps(fixations([(20, 15, 0, 1), (60, 45, 1, 2)], sigma=5), [(0, 1), (1, 2)], (60, 80), (30, 40),
                           recipe="reflacx")
    sentences = ["Opacity in the right upper zone.", "Blunted left costophrenic angle."] * 2
    figure = plot_sentence_heatmaps(image, sentences, np.concatenate([maps, maps]), tmp_path / "overlay.png")
    assert Image.open(tmp_path / "overlay.png").size == (3 * 320, 2 * 380)
    assert [axis.get_title() for axis in figure.axes[:2]] == ["Opacity in the right upper zone.",
                                                              "Blunted left costophrenic angle."]
    with pytest.raises(ValueError, match="one 2-D heatmap per sentence"):
        plot_sentence_heatmaps(image, sentences[:3], maps)
