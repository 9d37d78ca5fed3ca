"""LiT-style frozen towers: `EGMAModel.lock_image_tower` / `lock_text_tower` keep the frozen parameters bit-identical
through real optimiser steps, a fully frozen tower runs without a backward graph, and --lock_image_tower in a
pre-training run leaves the saved image tower as it started."""

import pytest
import torch

from egma_hf import EGMAModel
from egma_hf.modeling_egma import tower_layers
from egma_hf.training import TrainingSettings, train
from tests.helpers import TINY_BERT, TINY_TOWERS, make_batch, make_tokenizer, tiny_config


def tiny_model():
    torch.manual_seed(0)
    return EGMAModel(tiny_config(global_loss_weight=1.0)).train()


def snapshot(module):
    return {name: p.detach().clone() for name, p in module.named_parameters()}


def steps(model, batch, count=3):
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(count):
        loss = model(**batch, return_loss=True).loss
        assert torch.isfinite(loss)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()


@pytest.mark.parametrize("tower", ["image", "text"])
def test_last_layer_unlocked_the_rest_bit_identical(processor, tower):
    model = tiny_model()
    encoder = model.vision_model if tower == "image" else model.text_model
    getattr(model, f"lock_{tower}_tower")(unlocked_layers=1)
    # the last layer/stage: Swin's encoder.layers.1, BERT's encoder.layer.1 (both towers have two)
    last = "encoder.layers.1." if tower == "image" else "encoder.layer.1."
    before, projections = snapshot(encoder), snapshot(model.visual_projection) | snapshot(model.text_projection)
    steps(model, make_batch(processor))
    after = snapshot(encoder)
    unlocked = [n for n in before if n.startswith(last)]
    frozen = [n for n in before if n.startswith(("embeddings.", "encoder.")) and not n.startswith(last)]
    assert unlocked and frozen
    for name in frozen:
        assert torch.equal(before[name], after[name]), name
        assert not dict(encoder.named_parameters())[name].requires_grad
    assert any(not torch.equal(before[n], after[n]) for n in unlocked)
    now = snapshot(model.visual_projection) | snapshot(model.text_projection)
    assert all(not torch.equal(projections[n], now[n]) for n in projections)


def test_fully_frozen_image_tower_builds_no_backward_graph(processor):
    model = tiny_model()
    model.lock_image_tower()
    assert not any(p.requires_grad for p in model.vision_model.parameters())
    batch = make_batch(processor)
    seen = {}
    model.vision_model.register_forward_hook(lambda module, args, out: seen.update(out=out.last_hidden_state))
    before = snapshot(model.vision_model)
    out = model(**batch, return_loss=True)
    assert seen["out"].grad_fn is None and not seen["out"].requires_grad
    out.loss.backward()
    assert model.visual_projection.weight.grad is not None
    assert model.visual_projection.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.vision_model.parameters())
    steps(model, batch, count=2)
    after = snapshot(model.vision_model)
    assert all(torch.equal(before[n], after[n]) for n in before)
    # the text tower still trains and its output keeps its graph
    text = model.get_text_features(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    assert text.pooler_output.grad_fn is not None


def test_fully_frozen_text_tower_builds_no_backward_graph(processor):
    model = tiny_model()
    model.lock_text_tower()
    batch = make_batch(processor)
    text = model.get_text_features(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    assert text.last_hidden_state.grad_fn is None
    assert text.pooler_output.grad_fn is not None  # the projection still trains


# the layer stack found in each family, and what runs after it (trains when a layer is unlocked)
STACKS = {"swin": ("encoder.layers", ["layernorm."]), "vit": ("layers", ["layernorm.", "pooler."]),
          "dinov2_with_registers": ("encoder.layer", ["layernorm."]), "convnext": ("encoder.stages", ["layernorm."]),
          "timm_wrapper": ("timm_model.blocks", ["timm_model.norm."])}


@pytest.mark.parametrize("family", sorted(TINY_TOWERS))
def test_every_tower_family_unlocks_its_last_layer_and_what_follows(family):
    torch.manual_seed(0)
    model = EGMAModel(tiny_config(vision_config=dict(TINY_TOWERS[family])))
    stack, after = STACKS[family]
    assert tower_layers(model.vision_model)[0] == stack
    model.lock_image_tower(unlocked_layers=1)
    trainable = {n for n, p in model.vision_model.named_parameters() if p.requires_grad}
    last = f"{stack}.1."
    expected = {n for n, _ in model.vision_model.named_parameters() if n.startswith((last, *after))}
    assert trainable == expected and any(n.startswith(last) for n in trainable)
    assert all(any(n.startswith(prefix) for n in trainable) for prefix in after)
    pixels = torch.randn(2, 3, 32, 32)
    out = model.get_image_features(pixel_values=pixels)
    assert out.patch_grid == (4, 4) and out.last_hidden_state.grad_fn is not None
    model.lock_image_tower()
    assert model.get_image_features(pixel_values=pixels).last_hidden_state.grad_fn is None


def test_a_frozen_tower_keeps_its_graph_when_the_pixels_need_gradients():
    """Saliency on the input still works through a frozen tower."""
    model = tiny_model()
    model.lock_image_tower()
    pixels = torch.randn(2, 3, 32, 32, requires_grad=True)
    model.get_image_features(pixel_values=pixels).pooler_output.sum().backward()
    assert pixels.grad is not None and pixels.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.vision_model.parameters())


@pytest.mark.parametrize("tower, available", [("image", 2), ("text", 2)])
@pytest.mark.parametrize("count", [3, -1])
def test_a_bad_unlocked_count_is_a_value_error_naming_it(tower, available, count):
    model = tiny_model()
    with pytest.raises(ValueError, match=rf"unlocked_layers must be an integer in \[0, {available}\].*got {count}"):
        getattr(model, f"lock_{tower}_tower")(unlocked_layers=count)
    assert all(p.requires_grad for p in model.parameters())  # nothing frozen by a refused call


@pytest.mark.parametrize("args, message", [
    (["--lock_image_unlocked_layers", "1"], "--lock_image_unlocked_layers 1 needs --lock_image_tower"),
    (["--lock_text_tower", "--lock_text_unlocked_layers", "-1"], "--lock_text_unlocked_layers must be at least 0"),
])
def test_bad_lock_flags_are_refused_naming_the_flag(tmp_path, args, message):
    with pytest.raises(SystemExit, match=message):
        TrainingSettings.from_args([*args, "--output_dir", str(tmp_path / "out")]).check()


@pytest.mark.slow
def test_pretraining_with_lock_image_tower_keeps_the_image_tower(tmp_path):
    reference = EGMAModel(tiny_config(text_config=dict(TINY_BERT, vocab_size=make_tokenizer().vocab_size)))
    reference.vision_model.save_pretrained(tmp_path / "vision")
    reference.text_model.save_pretrained(tmp_path / "text")
    make_tokenizer().save_pretrained(tmp_path / "text")
    out = tmp_path / "locked"
    train(TrainingSettings.from_args([
        "--synthetic_samples", "48", "--batch_size", "8", "--epochs", "1", "--max_steps", "3", "--warmup_steps", "0",
        "--eval_every", "3", "--checkpoint_every", "3", "--lock_image_tower", "--output_dir", str(out),
        "--cache_dir", str(tmp_path / "cache"), "--vision_model", str(tmp_path / "vision"),
        "--text_model", str(tmp_path / "text")]))
    trained = EGMAModel.from_pretrained(out)
    start = reference.vision_model.state_dict()
    for name, value in trained.vision_model.state_dict().items():
        assert torch.equal(value, start[name]), name
    text_start = reference.text_model.state_dict()
    assert any(not torch.equal(v, text_start[n]) for n, v in trained.text_model.state_dict().items())
