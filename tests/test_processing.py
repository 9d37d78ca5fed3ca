"""EGMAImageProcessor / EGMAProcessor: sentence splitting, image modes, shared image-heatmap geometry, bad input."""

import numpy as np
import pytest
import torch
from PIL import Image

from egma_hf import EGMAImageProcessor, split_report_into_sentences
from egma_hf.image_processing_egma import CXR_MEAN, CXR_STD


@pytest.mark.parametrize(
    "report,sentences",
    [
        ("Heart size is normal. Lungs are clear.", ["Heart size is normal.", "Lungs are clear."]),
        ("FINDINGS: 1. No effusion. 2. A 3.5 cm opacity\nin the right lower lobe.",
         ["FINDINGS:", "No effusion.", "A 3.5 cm opacity in the right lower lobe."]),
        ("Is there pneumothorax? No! \n\n Stable", ["Is there pneumothorax?", "No!", "Stable"]),
        ("  .  ", []),
    ],
)
def test_sentence_splitting_rule(report, sentences):
    assert split_report_into_sentences(report) == sentences


def pixels_to_unit(pixel_values):
    return pixel_values * CXR_STD + CXR_MEAN


@pytest.mark.parametrize(
    "image,value",
    [
        (Image.new("L", (20, 20), 255), 1.0),
        (Image.new("RGB", (20, 20), (255, 255, 255)), 1.0),
        (Image.fromarray(np.full((20, 20), 65535, np.uint16)), 1.0),  # 16-bit grayscale PNG
        (np.full((20, 20), 32768, np.uint16), 32768 / 65535),
        (np.full((3, 20, 20), 0.25, np.float32), 0.25),  # channels-first float
        (torch.full((20, 20, 1), 0.5), 0.5),
    ],
    ids=["L", "RGB", "PIL-16bit", "uint16", "chw-float", "tensor-hwc"],
)
def test_images_of_any_mode_become_normalised_grayscale(image, value):
    pixel_values = EGMAImageProcessor(size=16)(image)["pixel_values"]
    assert pixel_values.shape == (1, 3, 16, 16)
    torch.testing.assert_close(pixels_to_unit(pixel_values), torch.full((1, 3, 16, 16), value), atol=1e-4, rtol=0)


def test_non_square_image_is_centred_on_a_black_square():
    image = np.ones((40, 20), np.float32)  # tall: width becomes 8 of 16, pads of 4 px left and right
    unit = pixels_to_unit(EGMAImageProcessor(size=16)(image)["pixel_values"])[0, 0]
    torch.testing.assert_close(unit[:, 4:12], torch.ones(16, 8), atol=1e-4, rtol=0)
    torch.testing.assert_close(unit[:, :4], torch.zeros(16, 4), atol=1e-4, rtol=0)
    torch.testing.assert_close(unit[:, 12:], torch.zeros(16, 4), atol=1e-4, rtol=0)


def test_heatmap_follows_its_image_geometry_at_lower_resolution():
    """A bright block in the image and the same block in a 4x smaller heatmap land on the same patches."""
    processor = EGMAImageProcessor(size=32, gaze_grid_size=4)
    image = np.zeros((64, 48), np.float32)
    image[8:24, 24:40] = 1.0
    heatmap = np.zeros((16, 12), np.float32)
    heatmap[2:6, 6:10] = 1.0
    pixels, sizes = processor.prepare_images([image])
    maps, has_gaze = processor.preprocess_gaze([[heatmap]], sizes, [1])
    image_grid = torch.nn.functional.adaptive_avg_pool2d(pixels_to_unit(pixels)[:, :1], 4)[0, 0]
    assert has_gaze.tolist() == [True] and maps.shape == (1, 1, 4, 4)
    torch.testing.assert_close(maps[0, 0], image_grid, atol=0.02, rtol=0)
    assert maps[0, 0].argmax() == image_grid.argmax()


def test_processor_batches_reports_as_sentence_slots(processor):
    batch = processor(images=[np.zeros((10, 10), np.uint8)] * 2,
                      text=["The heart size is normal. No pleural effusion.", ["pneumonia"]],
                      gaze_heatmaps=[np.ones((2, 5, 5)), None])
    assert batch["input_ids"].shape[:2] == (2, 2)
    assert batch["attention_mask"][:, :, 0].tolist() == [[1, 1], [1, 0]]
    assert torch.all(batch["input_ids"][1, 1] == processor.tokenizer.pad_token_id)
    assert batch["has_gaze"].tolist() == [True, False]
    assert batch["gaze_heatmaps"].shape == (2, 2, 4, 4) and batch["gaze_heatmaps"][1].abs().sum() == 0
    first = processor.tokenizer("The heart size is normal.", padding="max_length",
                                max_length=batch["input_ids"].shape[-1], return_tensors="pt")["input_ids"][0]
    assert torch.equal(batch["input_ids"][0, 0], first)


@pytest.mark.parametrize(
    "gaze,message",
    [
        ([np.ones((3, 5, 5)), None], "has 3 heatmaps but its report has 2 sentences"),
        ([np.full((2, 5, 5), np.nan), None], "NaN"),
        ([-np.ones((2, 5, 5)), None], "negative"),
        ([np.ones((2, 5, 9)), None], "aspect ratio"),
        ([np.ones((2, 5, 5))], "must match one to one"),
    ],
)
def test_bad_heatmaps_are_rejected(processor, gaze, message):
    with pytest.raises(ValueError, match=message):
        processor(images=[np.zeros((10, 10), np.uint8)] * 2, text=["No effusion. Heart is normal.", "edema"],
                  gaze_heatmaps=gaze)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(text=["  "]), r"text\[0\] has no sentence"),
        (dict(images=[np.zeros((0, 5), np.uint8)]), "empty image"),
        (dict(images=[np.full((5, 5), 2.0, np.float32)]), r"scaled to \[0, 1\]"),
        (dict(images=[np.zeros((5, 5), np.uint8)], text=["edema"], gaze_heatmaps=[np.ones((1, 5, 5))], foo=1),
         "unexpected"),
    ],
)
def test_bad_processor_input_is_rejected(processor, kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        processor(**kwargs)
