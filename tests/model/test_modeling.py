"""EGMAModel: CLIP-shaped outputs, towers, training behaviour and bad input."""

import math

import numpy as np
import pytest
import torch
from transformers import SwinConfig
from transformers.modeling_outputs import BaseModelOutputWithPooling

from egma_hf import EGMAConfig, EGMAModel
from egma_hf.modeling_egma import EGMATextFeatures
from tests.helpers import GRID, TINY_BERT, make_batch, tiny_config


def test_default_config_is_the_papers_model():
    config = EGMAConfig()
    vision, text = config.vision_config, config.text_config
    assert isinstance(vision, SwinConfig)
    assert (vision.image_size, vision.patch_size, vision.embed_dim, list(vision.depths), vision.window_size) == (
        224, 4, 96, [2, 2, 6, 2], 7)
    assert text.model_type == "bert" and text.vocab_size == 28996 and text.num_hidden_layers == 12
    assert text.hidden_size == 768
    assert config.projection_dim == 512
    assert math.isclose(math.exp(config.logit_scale_init_value), 1 / 0.07)
    assert math.isclose(math.exp(config.logit_scale_max), 100.0)
    # paper defaults where the released code differs
    assert config.mlce_s2p_weight == 0.5 and config.mlce_reduction == "batch"
    assert config.fine_grained_t2i_softmax_over == "images"
    assert math.isclose(config.egm_threshold, 3 / 7) and config.egm_eps == 0.01
    assert config.global_loss_weight == 0.0  # paper: L = L_EGF + L_EGM


def test_sub_configs_accept_dicts_and_objects():
    from_dicts = tiny_config()
    from_objects = EGMAConfig(vision_config=from_dicts.vision_config, text_config=from_dicts.text_config,
                              projection_dim=8)
    assert from_objects.to_dict()["vision_config"] == from_dicts.to_dict()["vision_config"]
    assert EGMAConfig(**from_dicts.to_dict()).text_config.hidden_size == TINY_BERT["hidden_size"]


@pytest.mark.parametrize(
    "field,value,message",
    [("egm_threshold", 1.5, "egm_threshold"), ("global_loss_weight", -1.0, "global_loss_weight"),
     ("egm_eps", 0.0, "egm_eps"), ("mlce_reduction", "mean", "mlce_reduction")],
)
def test_config_rejects_bad_values(field, value, message):
    with pytest.raises(Exception, match=message):
        tiny_config(**{field: value})


def test_config_needs_one_active_term():
    with pytest.raises(Exception, match="at least one"):
        tiny_config(mlce_loss_weight=0.0, fine_grained_loss_weight=0.0, egm_loss_weight=0.0)


def test_features_are_clip_shaped(model, processor):
    batch = make_batch(processor)
    image = model.get_image_features(pixel_values=batch["pixel_values"])
    text = model.get_text_features(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    assert isinstance(image, BaseModelOutputWithPooling) and isinstance(text, BaseModelOutputWithPooling)
    assert image.pooler_output.shape == (3, 8)
    assert image.patch_embeds.shape == (3, GRID * GRID, 8) and image.patch_grid == (GRID, GRID)
    assert text.pooler_output.shape == (3, 8) and text.sentence_embeds.shape == (3, 3, 8)
    assert text.sentence_mask.tolist() == [[True, True, True], [True, True, False], [True, False, False]]
    # a report's embedding is the mean of its sentence embeddings; padding slots are zero
    torch.testing.assert_close(text.pooler_output[1], text.sentence_embeds[1, :2].mean(0))
    assert torch.all(text.sentence_embeds[2, 1:] == 0)


def test_one_sentence_report_equals_the_same_prompt(model, tokenizer):
    prompt = tokenizer(["mild cardiomegaly .", "no pleural effusion"], padding=True, return_tensors="pt")
    flat = model.get_text_features(**prompt).pooler_output
    as_reports = model.get_text_features(**{k: v[:, None] for k, v in prompt.items()}).pooler_output
    torch.testing.assert_close(flat, as_reports)


def test_sentence_embedding_does_not_depend_on_batch_padding(model, tokenizer):
    short = tokenizer(["edema"], return_tensors="pt")
    padded = tokenizer(["edema", "the heart size is normal with mild stable cardiomegaly"], padding=True,
                       return_tensors="pt")
    alone = model.get_text_features(**short).pooler_output[0]
    in_batch = model.get_text_features(**padded).pooler_output[0]
    torch.testing.assert_close(alone, in_batch, atol=1e-5, rtol=1e-5)
    # the released code's unmasked pooling does depend on it
    model.config.text_pooling_mask_padding = False
    assert not torch.allclose(model.get_text_features(**short).pooler_output[0],
                              model.get_text_features(**padded).pooler_output[0], atol=1e-4)


def test_forward_logits_and_loss_terms(model, processor):
    batch = make_batch(processor)
    out = model(**batch, return_loss=True)
    assert out.logits_per_image.shape == (3, 3)
    torch.testing.assert_close(out.logits_per_text, out.logits_per_image.t())
    scale = model.logit_scale.exp()
    torch.testing.assert_close(out.logits_per_image, scale * out.image_embeds @ out.text_embeds.t())
    torch.testing.assert_close(out.image_embeds.norm(dim=-1), torch.ones(3))
    for term in ("global_loss", "mlce_loss", "fine_grained_loss", "egm_loss"):
        assert torch.isfinite(getattr(out, term))
    torch.testing.assert_close(out.loss, out.global_loss + out.mlce_loss + out.fine_grained_loss + out.egm_loss)
    no_loss = model(**batch)
    assert no_loss.loss is None and no_loss.egm_loss is None


def test_gaze_is_optional_and_changes_the_gaze_terms(model, processor):
    batch = make_batch(processor)
    with_gaze = model(**batch, return_loss=True)
    without = model(**{k: v for k, v in batch.items() if k not in ("gaze_heatmaps", "has_gaze")}, return_loss=True)
    assert without.mlce_loss == 0
    assert not torch.isclose(with_gaze.egm_loss, without.egm_loss)
    torch.testing.assert_close(with_gaze.fine_grained_loss, without.fine_grained_loss)
    none_has_gaze = model(**{**batch, "has_gaze": torch.zeros_like(batch["has_gaze"])}, return_loss=True)
    for name in ("loss", "mlce_loss", "egm_loss"):
        torch.testing.assert_close(getattr(none_has_gaze, name), getattr(without, name))


def test_logit_scale_is_clamped_to_100(model, processor):
    batch = make_batch(processor)
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
    out = model(**batch)
    torch.testing.assert_close(out.logits_per_image, 100.0 * out.image_embeds @ out.text_embeds.t())


def test_prompt_list_gives_images_by_prompts(model, processor, tokenizer):
    pixels = processor(images=[np.zeros((20, 20), np.uint8), np.ones((10, 30), np.float32)])["pixel_values"]
    prompts = tokenizer(["pneumonia", "no pleural effusion", "edema", "mild cardiomegaly"], padding=True,
                        return_tensors="pt")
    assert model(pixel_values=pixels, **prompts).logits_per_image.shape == (2, 4)


def test_one_optimisation_step_reduces_the_loss_on_a_fixed_batch(processor):
    torch.manual_seed(0)
    model = EGMAModel(tiny_config(global_loss_weight=1.0)).train()
    batch = make_batch(processor)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    before = model(**batch, return_loss=True).loss
    before.backward()
    optimizer.step()
    after = model(**batch, return_loss=True).loss
    assert after.item() < before.item()


def test_bf16_autocast_loss_and_gradients_are_finite(processor):
    torch.manual_seed(0)
    model = EGMAModel(tiny_config(global_loss_weight=1.0)).train()
    batch = make_batch(processor)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(**batch, return_loss=True)
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    out.loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert model.visual_projection.weight.grad.abs().sum() > 0 and model.logit_scale.grad is not None


@pytest.mark.parametrize(
    "vision_config,grid",
    [
        (dict(model_type="vit", image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=1,
              num_attention_heads=2, intermediate_size=32), 4),
        (dict(model_type="convnext", num_stages=2, hidden_sizes=[8, 16], depths=[1, 1], image_size=32), 4),
        (dict(model_type="timm_wrapper", architecture="convnext_atto"), 1),
        (dict(model_type="timm_wrapper", architecture="vit_tiny_patch16_224",
              model_args=dict(img_size=32, depth=1)), 2),
        (dict(model_type="timm_wrapper", architecture="swin_tiny_patch4_window7_224",
              model_args=dict(img_size=32, window_size=4, depths=(1, 1), num_heads=(1, 2), embed_dim=16)), 4),
    ],
    ids=["hf-vit", "hf-convnext", "timm-convnext", "timm-vit", "timm-swin-nhwc"],
)
def test_other_vision_towers_yield_a_patch_grid_and_a_loss(vision_config, grid, tokenizer):
    from egma_hf import EGMAImageProcessor, EGMAProcessor

    torch.manual_seed(0)
    model = EGMAModel(EGMAConfig(vision_config=vision_config, text_config=dict(TINY_BERT), projection_dim=8))
    processor = EGMAProcessor(EGMAImageProcessor(size=32, gaze_grid_size=grid), tokenizer)
    batch = make_batch(processor)
    out = model(**batch, return_loss=True)
    assert out.vision_model_output.patch_grid == (grid, grid)
    assert out.patch_embeds.shape[:2] == (3, grid * grid)
    assert torch.isfinite(out.loss) and torch.isfinite(out.egm_loss) and out.mlce_loss > 0


def test_heatmaps_on_the_wrong_grid_are_rejected_with_the_expected_shape(model, processor):
    batch = make_batch(processor)
    batch["gaze_heatmaps"] = torch.rand(3, 3, 7, 7)
    with pytest.raises(ValueError, match=r"\(3, 3, 4, 4\).*patch grid"):
        model(**batch, return_loss=True)


@pytest.mark.parametrize("bad,message", [(float("nan"), "NaN"), (-1.0, "negative"), (float("inf"), "inf")])
def test_bad_heatmap_values_are_rejected(model, processor, bad, message):
    batch = make_batch(processor)
    batch["gaze_heatmaps"][0, 0, 1, 1] = bad
    with pytest.raises(ValueError, match=message):
        model(**batch, return_loss=True)


def test_empty_report_and_empty_image_are_rejected(model, processor):
    batch = make_batch(processor)
    batch["attention_mask"][1] = 0
    with pytest.raises(ValueError, match=r"text\(s\) \[1\] have no sentence"):
        model(**batch)
    with pytest.raises(ValueError, match="pixel_values"):
        model.get_image_features(pixel_values=torch.zeros(0, 3, 32, 32))


def test_gaze_for_a_tower_without_patch_grid_is_rejected(model, processor):
    batch = make_batch(processor)
    original = model._patch_tokens
    model._patch_tokens = lambda hidden: (None, None, "13 vision tokens do not form a square patch grid")
    try:
        assert model(pixel_values=batch["pixel_values"], input_ids=batch["input_ids"],
                     attention_mask=batch["attention_mask"]).logits_per_image.shape == (3, 3)
        with pytest.raises(ValueError, match="no patch grid.*13 vision tokens"):
            model(**batch)
    finally:
        model._patch_tokens = original


def test_patch_grid_is_derived_from_token_counts(model):
    hidden = torch.randn(2, 1 + 16, 8)  # class token + 4x4
    tokens, grid, _ = model._patch_tokens(hidden)
    assert grid == (4, 4) and torch.equal(tokens, hidden[:, 1:])
    tokens, grid, reason = model._patch_tokens(torch.randn(2, 13, 8))
    assert tokens is None and "13 vision tokens" in reason


def test_text_features_type(model, tokenizer):
    out = model.get_text_features(**tokenizer(["edema"], return_tensors="pt"))
    assert isinstance(out, EGMATextFeatures) and out.last_hidden_state.shape[0] == 1


def test_has_gaze_without_heatmaps_is_rejected(model, processor):
    batch = make_batch(processor)
    del batch["gaze_heatmaps"]
    with pytest.raises(ValueError, match="no gaze_heatmaps"):
        model(**batch, return_loss=True)


def test_activation_checkpointing_gives_the_same_loss_and_gradients(processor):
    torch.manual_seed(0)
    model = EGMAModel(tiny_config(global_loss_weight=1.0)).train()
    batch = make_batch(processor)
    reference = model(**batch, return_loss=True).loss
    reference.backward()
    expected = model.visual_projection.weight.grad.clone()
    model.zero_grad()
    model.activation_checkpointing_enable()
    for tower in (model.text_model, model.vision_model):
        assert any(getattr(module, "gradient_checkpointing", False) for module in tower.modules())
    loss = model(**batch, return_loss=True).loss
    loss.backward()
    torch.testing.assert_close(loss, reference)
    torch.testing.assert_close(model.visual_projection.weight.grad, expected)


def test_activation_checkpointing_reaches_a_timm_tower(tokenizer):
    from egma_hf import EGMAImageProcessor, EGMAProcessor

    torch.manual_seed(0)
    config = EGMAConfig(vision_config=dict(model_type="timm_wrapper", architecture="resnet10t",
                                           model_args=dict(output_stride=16)),
                        text_config=dict(TINY_BERT), projection_dim=8, global_loss_weight=1.0)
    model = EGMAModel(config).train()
    batch = make_batch(EGMAProcessor(EGMAImageProcessor(size=32, gaze_grid_size=2), tokenizer))
    reference = model(**batch, return_loss=True).loss
    reference.backward()
    expected = model.visual_projection.weight.grad.clone()
    model.zero_grad()
    model.activation_checkpointing_enable()
    assert model.vision_model.timm_model.grad_checkpointing
    loss = model(**batch, return_loss=True).loss
    loss.backward()
    torch.testing.assert_close(loss, reference)
    torch.testing.assert_close(model.visual_projection.weight.grad, expected)
