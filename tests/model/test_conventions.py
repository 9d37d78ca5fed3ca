"""transformers' calling convention on EGMA (return_dict, output_hidden_states, output_attentions, config flags),
finite losses in float16 / bfloat16, and from_pretrained refusing folders that are not EGMA checkpoints."""

import pytest
import torch
from transformers import BertConfig, BertModel, CLIPConfig, CLIPModel

from egma_hf import EGMAForImageClassification, EGMAModel
from tests.helpers import TINY_BERT, make_batch, tiny_config

LOSS_TERMS = ("loss", "global_loss", "mlce_loss", "fine_grained_loss", "egm_loss")


def assert_same_structure(tuple_output, dict_output):
    """The tuple form holds the dict form's non-None values in order, nested outputs as tuples."""
    values = [v for v in dict_output.values() if v is not None]
    assert len(tuple_output) == len(values)
    for got, expected in zip(tuple_output, values):
        if isinstance(expected, torch.Tensor):
            assert torch.equal(got, expected)
        elif hasattr(expected, "to_tuple"):
            assert_same_structure(got, expected)
        else:
            assert got == expected


def test_return_dict_false_gives_the_same_values_as_a_tuple(model, processor):
    batch = make_batch(processor)
    with torch.no_grad():
        as_dict = model(**batch, return_loss=True)
        as_tuple = model(**batch, return_loss=True, return_dict=False)
    assert isinstance(as_tuple, tuple)
    assert torch.equal(as_tuple[0], as_dict.loss)
    assert_same_structure(as_tuple, as_dict)


def test_config_return_dict_false_is_honoured_everywhere(model, processor):
    batch = make_batch(processor)
    model.config.return_dict = False
    with torch.no_grad():
        out = model(**batch)
        image = model.get_image_features(pixel_values=batch["pixel_values"])
        text = model.get_text_features(batch["input_ids"], batch["attention_mask"])
        explicit = model.get_image_features(pixel_values=batch["pixel_values"], return_dict=True)
    assert isinstance(out, tuple) and isinstance(image, tuple) and isinstance(text, tuple)
    assert torch.equal(image[1], explicit.pooler_output)  # (last_hidden_state, pooler_output, ...)


def test_hidden_states_and_attentions_come_from_the_towers(model, processor):
    batch = make_batch(processor)  # reports of 3, 2 and 1 sentences: 6 real sentences
    model.set_attn_implementation("eager")
    with torch.no_grad():
        plain = model(**batch)
        out = model(**batch, output_hidden_states=True, output_attentions=True)
    assert plain.text_model_output.hidden_states is None and plain.vision_model_output.hidden_states is None
    text, vision = out.text_model_output, out.vision_model_output
    layers = TINY_BERT["num_hidden_layers"]
    assert len(text.hidden_states) == layers + 1 and len(text.attentions) == layers
    assert text.hidden_states[0].shape[0] == 6 and text.hidden_states[-1].shape == text.last_hidden_state.shape
    assert len(vision.hidden_states) == 3 and len(vision.attentions) == 2  # Swin: embeddings + 2 stages, 2 blocks
    # the outputs requested change nothing else
    torch.testing.assert_close(out.logits_per_image, plain.logits_per_image)
    torch.testing.assert_close(text.sentence_embeds, plain.text_model_output.sentence_embeds)


def test_config_output_hidden_states_is_honoured(model, processor):
    batch = make_batch(processor)
    model.config.output_hidden_states = True
    with torch.no_grad():
        text = model.get_text_features(batch["input_ids"], batch["attention_mask"])
    assert len(text.hidden_states) == TINY_BERT["num_hidden_layers"] + 1


def test_selected_hidden_states_keep_only_those_asked_for(model, processor):
    batch = make_batch(processor)
    with torch.no_grad():
        every = model.get_text_features(batch["input_ids"], batch["attention_mask"], output_hidden_states=True)
        some = model.get_text_features(batch["input_ids"], batch["attention_mask"], output_hidden_states=[0, -1])
    assert some.hidden_states[1] is None
    assert torch.equal(some.hidden_states[0], every.hidden_states[0])
    assert torch.equal(some.hidden_states[-1], every.hidden_states[-1])
    torch.testing.assert_close(some.pooler_output, every.pooler_output)  # pooling still sees every layer


def test_unknown_keywords_are_rejected_by_name(model, processor):
    batch = make_batch(processor)
    with pytest.raises(TypeError, match=r"unexpected keyword argument\(s\) \['gaze_heatmap'\]"):
        model(**batch, gaze_heatmap=batch["gaze_heatmaps"])
    with pytest.raises(TypeError, match="get_text_features got unexpected keyword"):
        model.get_text_features(batch["input_ids"], pixel_values=batch["pixel_values"])


def test_image_classifier_follows_the_convention(processor):
    torch.manual_seed(0)
    classifier = EGMAForImageClassification(tiny_config(num_labels=3)).eval()
    pixel_values = make_batch(processor)["pixel_values"]
    with torch.no_grad():
        out = classifier(pixel_values, output_hidden_states=True)
        as_tuple = classifier(pixel_values, labels=torch.tensor([0, 1, 2]), return_dict=False)
    assert out.logits.shape == (3, 3) and len(out.hidden_states) == 3
    assert isinstance(as_tuple, tuple) and as_tuple[0].ndim == 0 and torch.equal(as_tuple[1], out.logits)
    torch.testing.assert_close(classifier.get_pooled_features(pixel_values) @ classifier.classifier.weight.t()
                               + classifier.classifier.bias, out.logits)


# ------------------------------------------------------------------------------------------------------------------
# Precision: padded sentence slots must not turn into 0/0 in half precision.


def losses(model, batch) -> dict[str, torch.Tensor]:
    out = model(**batch, return_loss=True)
    return {name: getattr(out, name) for name in LOSS_TERMS}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("how", ["autocast", "half_model"])
def test_every_loss_term_is_finite_and_close_to_fp32(processor, dtype, how):
    torch.manual_seed(0)
    model = EGMAModel(tiny_config(global_loss_weight=1.0)).train()
    batch = make_batch(processor)  # 3 sentence slots; reports 2 and 3 have padding slots; sample 2 has no gaze
    reference = {name: value.item() for name, value in losses(model, batch).items()}
    model.zero_grad()
    if how == "autocast":
        with torch.autocast("cpu", dtype=dtype):
            terms = losses(model, batch)
    else:
        model = model.to(dtype)
        batch = {k: v.to(dtype) if v.is_floating_point() else v for k, v in batch.items()}
        terms = losses(model, batch)
    tolerance = 0.02 if dtype == torch.bfloat16 else 0.005
    for name, value in terms.items():
        assert torch.isfinite(value), f"{name} is {value.item()} in {dtype} ({how})"
        assert value.item() == pytest.approx(reference[name], rel=tolerance), name
    terms["loss"].backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_padding_slots_stay_zero_when_normalised_in_fp16(model, processor):
    batch = make_batch(processor)
    model = model.half()
    batch = {k: v.half() if v.is_floating_point() else v for k, v in batch.items()}
    with torch.no_grad():
        out = model(**batch)
    assert torch.isfinite(out.sentence_embeds).all()
    assert (out.sentence_embeds[~out.sentence_mask] == 0).all()
    norms = out.sentence_embeds[out.sentence_mask].float().norm(dim=-1)
    torch.testing.assert_close(norms, torch.ones_like(norms), atol=2e-3, rtol=0)


# ------------------------------------------------------------------------------------------------------------------
# from_pretrained on folders that are not EGMA checkpoints


def test_from_pretrained_refuses_a_bert_folder(tmp_path):
    BertModel(BertConfig(**{k: v for k, v in TINY_BERT.items() if k != "model_type"})).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"holds a 'bert' model, not an EGMA checkpoint.*from_vision_text_pretrained"):
        EGMAModel.from_pretrained(tmp_path)


def test_from_pretrained_refuses_a_clip_folder(tmp_path):
    config = CLIPConfig(
        text_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=8,
    )
    CLIPModel(config).save_pretrained(tmp_path)
    for cls in (EGMAModel, EGMAForImageClassification):
        with pytest.raises(ValueError, match=rf"{tmp_path} holds a 'clip' model"):
            cls.from_pretrained(tmp_path)


def test_from_pretrained_names_a_truncated_weights_file(model, tmp_path):
    model.save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(ValueError, match=rf"{weights} is not a readable safetensors file.*truncated"):
        EGMAModel.from_pretrained(tmp_path)


def test_from_pretrained_still_reports_loading_info(model, tmp_path):
    model.save_pretrained(tmp_path)
    loaded, info = EGMAModel.from_pretrained(tmp_path, output_loading_info=True)
    assert info["missing_keys"] == set() or not info["missing_keys"]
    assert torch.equal(loaded.logit_scale, model.logit_scale)
    classifier, info = EGMAForImageClassification.from_pretrained(tmp_path, num_labels=2, output_loading_info=True)
    assert set(info["missing_keys"]) == {"classifier.weight", "classifier.bias"}


def test_token_ids_outside_the_vocabulary_are_named(model, processor):
    batch = make_batch(processor)
    batch["input_ids"][0, 0, 1] = TINY_BERT["vocab_size"] + 3
    with pytest.raises(ValueError, match=r"token ids in \[0, 47\], outside the text tower.s vocabulary of 44"):
        model(**batch)


def test_wrong_dtypes_are_named(model, processor):
    batch = make_batch(processor)
    with pytest.raises(TypeError, match="input_ids must hold integer token ids, got dtype torch.float32"):
        model.get_text_features(batch["input_ids"].float(), batch["attention_mask"])
    with pytest.raises(TypeError, match="pixel_values must be a float tensor"):
        model.get_image_features(pixel_values=(batch["pixel_values"] * 255).to(torch.uint8))
