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
        (dict(text=5), r"text must be a str or a list of reports, got int"),
        (dict(text=["edema", 3]), r"text\[1\] must be a str or a list of str, got int"),
        (dict(images=[np.zeros((0, 5), np.uint8)]), "empty image"),
        (dict(images=[np.full((5, 5), 2.0, np.float32)]), r"scaled to \[0, 1\]"),
        (dict(images=[np.zeros((5, 5), np.uint8)], text=["edema"], gaze_heatmaps=[np.ones((1, 5, 5))], foo=1),
         "unexpected"),
    ],
)
def test_bad_processor_input_is_rejected(processor, kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        processor(**kwargs)


# CLIPProcessor's tokenizer keywords: padding, truncation, max_length, return_tensors.
IMAGES = [np.zeros((10, 10), np.uint8)] * 2
TEXT = ["The heart size is normal. No pleural effusion.", "edema"]
SENTENCES = ["The heart size is normal.", "No pleural effusion.", "edema"]  # flat, in layout order
SLOTS = [(0, 0), (0, 1), (1, 0)]


def assert_sentences_tokenized_as(batch, expected):
    """Each sentence's row in the (B, M, L) layout equals the tokenizer's own (L,) encoding of it."""
    for key, values in expected.items():
        for index, (report, slot) in enumerate(SLOTS):
            assert torch.equal(batch[key][report, slot], values[index]), (key, index)
    assert not batch["attention_mask"][1, 1].any()  # the second report's empty sentence slot


def test_clip_style_padding_true_is_the_default_layout(processor):
    default = processor(images=IMAGES, text=TEXT)
    clip_style = processor(images=IMAGES, text=TEXT, padding=True)
    expected = processor.tokenizer(SENTENCES, padding=True, truncation=True, max_length=77, return_tensors="pt")
    assert clip_style["input_ids"].shape == (2, 2, expected["input_ids"].shape[-1])
    assert_sentences_tokenized_as(clip_style, expected)
    for key in default:
        assert torch.equal(default[key], clip_style[key])


def test_padding_max_length_pads_every_sentence_to_max_length(processor):
    batch = processor(images=IMAGES, text=TEXT, padding="max_length", max_length=16)
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (2, 2, 16)
    expected = processor.tokenizer(SENTENCES, padding="max_length", max_length=16, return_tensors="pt")
    assert_sentences_tokenized_as(batch, expected)
    assert batch["attention_mask"][1, 0].sum() == 3  # [CLS] edema [SEP], then 13 padding tokens


def test_truncation_to_max_length(processor):
    batch = processor(text=TEXT, truncation=True, max_length=5)
    assert batch["input_ids"].shape == (2, 2, 5)
    expected = processor.tokenizer(SENTENCES, padding=True, truncation=True, max_length=5, return_tensors="pt")
    assert_sentences_tokenized_as(batch, expected)
    assert batch["input_ids"][0, 0, -1] == processor.tokenizer.sep_token_id  # truncated, still closed by [SEP]


def test_truncation_false_keeps_whole_sentences_as_the_tokenizer_does(processor):
    batch = processor(text=TEXT, truncation=False, max_length=4)  # max_length only bounds truncation
    expected = processor.tokenizer(SENTENCES, padding=True, return_tensors="pt")
    assert batch["input_ids"].shape == (2, 2, expected["input_ids"].shape[-1]) and expected["input_ids"].shape[-1] > 4
    assert_sentences_tokenized_as(batch, expected)


def test_no_padding_works_when_sentences_have_one_length(processor):
    batch = processor(text=["edema", ["pneumonia", "edema"]], padding=False)
    assert batch["input_ids"].shape == (2, 2, 3)
    assert batch["attention_mask"].sum(-1).tolist() == [[3, 0], [3, 3]]


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(padding=False), r"padding='do_not_pad'.* different lengths \(3 to 8 tokens; the longest is sentence 0 of "
                              r"text\[0\]\).*use padding=True"),
        (dict(padding="do_not_pad"), r"padding='do_not_pad'.*different lengths"),
        (dict(padding="max_length", truncation=False, max_length=4),
         r"padding='max_length', truncation=False, max_length=4 leave the sentences at different lengths.*"
         r"or truncation=True"),
    ],
)
def test_options_that_leave_ragged_sentences_are_an_error_naming_them(processor, kwargs, message):
    with pytest.raises(ValueError, match=message):
        processor(images=IMAGES, text=TEXT, **kwargs)


def test_return_tensors_np_and_none(processor):
    gaze = [np.ones((2, 5, 5)), None]
    as_torch = processor(images=IMAGES, text=TEXT, gaze_heatmaps=gaze)
    as_numpy = processor(images=IMAGES, text=TEXT, gaze_heatmaps=gaze, return_tensors="np")
    as_lists = processor(images=IMAGES, text=TEXT, gaze_heatmaps=gaze, return_tensors=None)
    assert set(as_numpy) == set(as_lists) == set(as_torch)
    for key, value in as_torch.items():
        assert isinstance(as_numpy[key], np.ndarray) and np.array_equal(as_numpy[key], value.numpy()), key
        assert isinstance(as_lists[key], list) and as_lists[key] == value.tolist(), key
    pixels = processor.image_processor(IMAGES, return_tensors="np")["pixel_values"]
    assert isinstance(pixels, np.ndarray) and np.array_equal(pixels, as_torch["pixel_values"].numpy())
    with pytest.raises(ValueError, match=r"return_tensors must be 'pt', 'np' or None, got 'jax'"):
        processor.image_processor(IMAGES, return_tensors="jax")


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(return_tensors="tf"), r"return_tensors must be 'pt', 'np' or None, got 'tf'"),
        (dict(padding="yes"), r"padding must be True, False, 'longest', 'max_length' or 'do_not_pad', got 'yes'"),
        (dict(truncation="only_second"), r"truncation must be True, False, None or one of .*got 'only_second'"),
        (dict(max_length=0), r"max_length must be an int >= 1 .*got 0"),
        (dict(max_length=2.5), r"max_length must be an int >= 1 .*got 2.5"),
        (dict(max_length=True), r"max_length must be an int >= 1 .*got True"),
        (dict(pad_to_multiple_of=8, text_kwargs={}), r"unexpected arguments for EGMAProcessor: \['pad_to_multiple_of', "
                                                     r"'text_kwargs'\]"),
    ],
)
def test_bad_tokenizer_options_are_rejected(processor, kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        processor(images=IMAGES, text=TEXT, **kwargs)


# Image processor: images, gaze heatmaps and settings a careless caller could pass.
GOOD = np.zeros((10, 10), np.float32)


@pytest.mark.parametrize(
    "images,error,message",
    [
        ([GOOD, Image.new("L", (0, 7))], ValueError, r"images\[1\]: empty image of size 0x7"),
        ([GOOD, np.zeros((5, 0), np.uint8)], ValueError, r"images\[1\]: empty image of shape \(5, 0\)"),
        ([GOOD, np.zeros(5)], ValueError, r"images\[1\]: expected \(H, W\).*got shape \(5,\)"),
        ([np.zeros((5, 5, 2))], ValueError, r"images\[0\]: expected \(H, W\).*got shape \(5, 5, 2\)"),
        (np.zeros((2, 3, 10, 10)), ValueError, r"images\[0\]: .*got shape \(2, 3, 10, 10\); give a batch as a list"),
        ([GOOD, GOOD, np.full((5, 5), np.nan, np.float32)], ValueError, r"images\[2\]: image contains NaN or inf"),
        ([torch.full((5, 5), float("inf"))], ValueError, r"images\[0\]: image contains NaN or inf"),
        ([np.full((5, 5), -3, np.int8)], ValueError, r"images\[0\]: int8 pixels must lie in \[0, 127\]"),
        ([np.full((5, 5), 70000, np.int64)], ValueError, r"images\[0\]: int64 pixels must lie in \[0, 65535\] "
                                                         r"\(integer types wider than 16 bits hold 16-bit pixels\)"),
        ([Image.fromarray(np.full((5, 5), -5, np.int32))], ValueError, r"images\[0\]: int32 pixels must lie in"),
        ([np.ones((5, 5), complex)], TypeError, r"images\[0\]: pixels must be real numbers, got dtype complex128"),
        ([np.array([[None, 1]])], TypeError, r"images\[0\]: pixels must be real numbers, got dtype object"),
        (["cxr.png"], TypeError, r"images\[0\]: expected a PIL image, numpy array or torch tensor, got str"),
        ([], ValueError, r"images: got an empty list"),
    ],
)
def test_bad_images_are_rejected_naming_the_sample(images, error, message):
    with pytest.raises(error, match=message):
        EGMAImageProcessor(size=16, gaze_grid_size=4).prepare_images(images)


def test_wide_integer_and_bfloat16_images_read_like_their_pil_and_float32_twins():
    processor = EGMAImageProcessor(size=16)
    pixels = np.arange(400, dtype=np.int32).reshape(20, 20) * 150  # 16-bit values in an int32 array
    from_pil = processor(Image.fromarray(pixels))["pixel_values"]  # PIL "I" mode, as 16-bit PNGs open
    torch.testing.assert_close(processor(pixels)["pixel_values"], from_pil)
    torch.testing.assert_close(processor(pixels.astype(np.int64))["pixel_values"], from_pil)
    half = torch.full((20, 20), 0.5, dtype=torch.bfloat16)
    torch.testing.assert_close(processor(half)["pixel_values"], processor(half.float())["pixel_values"])


NAN_SECOND_SENTENCE = [np.ones((5, 5)), np.where(np.eye(5, dtype=bool), np.nan, 1.0)]


@pytest.mark.parametrize(
    "gaze,sizes,slots,error,message",
    [
        ([None, NAN_SECOND_SENTENCE], [(10, 10)] * 2, [2, 2], ValueError,
         r"gaze_heatmaps\[1\]: the heatmaps of sentences \[1\] \(0-based\) contain NaN or inf"),
        ([np.stack([np.ones((5, 5)), np.full((5, 5), np.inf), np.ones((5, 5))])], [(10, 10)], [3], ValueError,
         r"gaze_heatmaps\[0\]: the heatmaps of sentences \[1\] \(0-based\) contain NaN or inf"),
        ([None, -np.ones((2, 5, 5))], [(10, 10)] * 2, 2, ValueError,
         r"gaze_heatmaps\[1\]: the heatmaps of sentences \[0, 1\] \(0-based\) contain negative values"),
        ([np.full((1, 5, 5), 1e39)], [(10, 10)], [1], ValueError, r"gaze_heatmaps\[0\]: .*beyond float32's range"),
        ([np.full((1, 5, 5), 3e38, np.float32)], [(10, 10)], [1], ValueError,
         r"gaze_heatmaps\[0\]: values up to 3e\+38 overflow float32 when pooled"),
        ([None, np.ones((3, 5, 5))], [(10, 10)] * 2, [2, 2], ValueError,
         r"gaze_heatmaps\[1\] has 3 heatmaps but its report has 2 sentences"),
        ([[np.ones((5, 5)), np.ones((4, 4))]], [(10, 10)], [2], ValueError,
         r"gaze_heatmaps\[0\]: heatmaps must be 2-D and all of one shape"),
        ([np.ones((5, 5))], [(10, 10)], [1], ValueError, r"gaze_heatmaps\[0\]: expected \(sentences, h, w\) heatmaps"),
        ([None, ["not", "numbers"]], [(10, 10)] * 2, [2, 2], TypeError,
         r"gaze_heatmaps\[1\]\[0\]: expected numeric heatmaps"),
        (np.ones((1, 1, 5, 5)), [(10, 10)], [1], TypeError, r"gaze_heatmaps must be a list with one entry"),
        ([None, np.ones((1, 5, 5))], [(10, 10)] * 2, [1], ValueError, r"num_slots has 1 entries but there are 2"),
        ([None], [(10, 10)], [-1], ValueError, r"num_slots\[0\] must be a sentence count"),
        ([None], [(10, 0)], [1], ValueError, r"image_sizes\[0\] width must be an int >= 1, got 0"),
        ([], [], [], ValueError, r"image_sizes: got no images"),
    ],
)
def test_bad_gaze_heatmaps_are_rejected_naming_sample_and_sentence(gaze, sizes, slots, error, message):
    with pytest.raises(error, match=message):
        EGMAImageProcessor(size=16, gaze_grid_size=4).preprocess_gaze(gaze, sizes, slots)


def test_gaze_as_torch_tensors_including_bfloat16_with_grad():
    processor = EGMAImageProcessor(size=16, gaze_grid_size=4)
    maps = torch.rand(2, 5, 5, requires_grad=True)
    pooled, has_gaze = processor.preprocess_gaze([maps.to(torch.bfloat16)], [(10, 10)], np.int64(2))
    reference, _ = processor.preprocess_gaze([maps.detach().to(torch.bfloat16).float().numpy()], [(10, 10)], [2])
    assert has_gaze.tolist() == [True]
    torch.testing.assert_close(pooled, reference)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(size=0), r"size must be an int >= 1, got 0"),
        (dict(size=-224), r"size must be an int >= 1, got -224"),
        (dict(size=1.5), r"size must be an int >= 1, got 1.5"),
        (dict(size="224"), r"size must be an int >= 1, got '224'"),
        (dict(size=True), r"size must be an int >= 1, got True"),
        (dict(size={"width": 224}), r"size: EGMA's input is square"),
        (dict(size={"height": 224, "width": 160}), r"size: EGMA's input is square"),
        (dict(gaze_grid_size=0), r"gaze_grid_size must be an int >= 1, got 0"),
        (dict(size=4, gaze_grid_size=8), r"gaze_grid_size \(8\) must not exceed size \(4\)"),
        (dict(image_std=0.0), r"image_std must be > 0"),
        (dict(image_std=float("nan")), r"image_std must be one finite number"),
        (dict(image_mean=float("inf")), r"image_mean must be one finite number"),
        (dict(image_mean=[0.48, 0.46, 0.41]), r"image_mean must be one finite number .*got \[0.48, 0.46, 0.41\]"),
    ],
)
def test_bad_image_processor_settings_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        EGMAImageProcessor(**kwargs)


def test_square_size_dict_is_accepted():
    assert EGMAImageProcessor(size={"height": 32, "width": 32}).size == 32
    assert EGMAImageProcessor(size={"shortest_edge": 48}).size == 48
