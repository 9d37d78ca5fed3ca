"""Conversion of original MedCLIP / EGMA checkpoints: a tiny model written like MedCLIP's `MedCLIPModel` (as the EGMA
code uses it) is saved in the transformers-4.x layout, converted, and must give the same embeddings and logits."""

import importlib.util
import math
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from transformers import BertConfig, BertModel, SwinConfig, SwinModel

from egma_hf import EGMAConfig, EGMAModel
from egma_hf.conversion import (
    config_for_original_checkpoint,
    convert_medclip_state_dict,
    load_original_checkpoint,
)
from tests.helpers import IMAGE_SIZE, REPO_ROOT, TINY_BERT, TINY_SWIN, make_batch, make_tokenizer

CLI = os.path.join(REPO_ROOT, "examples", "convert_checkpoint.py")

# Two blocks per stage, so stage 1 has a shifted-window block; five text layers, so "the last 4" excludes some.
SWIN = {**TINY_SWIN, "depths": [2, 2]}
BERT = {**TINY_BERT, "num_hidden_layers": 5}
PROJECTION_DIM = 8
TEXTS = ["the heart size is normal", "no pleural effusion",
         "a small left lower lobe opacity with mild edema at the base"]


class OriginalVisionModel(nn.Module):
    """MedCLIP's `MedCLIPVisionModelViT`: Swin's pooled output through a bias-free projection head."""

    def __init__(self, swin_config: SwinConfig):
        super().__init__()
        self.model = SwinModel(swin_config)
        self.projection_head = nn.Linear(self.model.num_features, PROJECTION_DIM, bias=False)

    def forward(self, pixel_values):
        if pixel_values.shape[1] == 1:
            pixel_values = pixel_values.repeat((1, 3, 1, 1))
        return self.projection_head(self.model(pixel_values)["pooler_output"])


class OriginalTextModel(nn.Module):
    """EGMA's `MedCLIPTextModel`: BERT (with its pooler, unused), the mean of the last 4 hidden layers over every
    token position (padding included), then a bias-free projection head."""

    def __init__(self, bert_config: BertConfig):
        super().__init__()
        self.last_n_layer = 4
        self.model = BertModel(bert_config)
        self.projection_head = nn.Linear(bert_config.hidden_size, PROJECTION_DIM, bias=False)

    def forward(self, input_ids, attention_mask):
        output = self.model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        last_hidden_states = torch.stack(output["hidden_states"][-self.last_n_layer:])  # (4, B, L, H)
        embed = last_hidden_states.permute(1, 0, 2, 3).mean(1).mean(1)
        return self.projection_head(embed)


class OriginalModel(nn.Module):
    """MedCLIP's `MedCLIPModel` forward: normalised embeddings, logit_scale clamped to [0, 4.6052]."""

    def __init__(self):
        super().__init__()
        swin = {k: v for k, v in SWIN.items() if k != "model_type"}
        bert = {k: v for k, v in BERT.items() if k != "model_type"}
        self.vision_model = OriginalVisionModel(SwinConfig(**swin))
        self.text_model = OriginalTextModel(BertConfig(**bert))
        self.logit_scale = nn.Parameter(torch.log(torch.tensor(1 / 0.07)))

    def forward(self, input_ids, pixel_values, attention_mask):
        img_embeds = self.vision_model(pixel_values)
        img_embeds = img_embeds / img_embeds.norm(dim=-1, keepdim=True)
        text_embeds = self.text_model(input_ids, attention_mask)
        text_embeds = text_embeds / text_embeds.norm(dim=-1, keepdim=True)
        logit_scale = self.logit_scale.clamp(0, 4.6052).exp()
        logits_per_text = text_embeds @ img_embeds.t() * logit_scale
        return {"img_embeds": img_embeds, "text_embeds": text_embeds, "logits": logits_per_text.t()}


def egma_config(**overrides) -> EGMAConfig:
    kwargs = dict(vision_config=dict(SWIN), text_config=dict(BERT), projection_dim=PROJECTION_DIM,
                  text_pooling_mask_padding=False)
    kwargs.update(overrides)
    return EGMAConfig(**kwargs)


def original_state_dict(original: OriginalModel, tmp_path) -> dict[str, torch.Tensor]:
    """The state dict as MedCLIP/EGMA saved it with transformers 4.x: Swin's old key names, its
    relative_position_index buffers, and BERT's position_ids buffer."""
    state_dict = {k: v for k, v in original.state_dict().items() if not k.startswith("vision_model.model.")}
    # transformers 5 writes Swin checkpoints with the 4.x key names; take them from there, not from our own table.
    original.vision_model.model.save_pretrained(tmp_path / "swin_4x_names")
    for key, tensor in load_file(tmp_path / "swin_4x_names" / "model.safetensors").items():
        state_dict[f"vision_model.model.{key}"] = tensor
    assert "vision_model.model.encoder.layers.0.blocks.1.attention.self.query.weight" in state_dict
    assert "vision_model.model.encoder.layers.0.blocks.1.intermediate.dense.weight" in state_dict

    for name, module in original.vision_model.model.named_modules():
        if hasattr(module, "relative_position_index"):  # 4.x: attention.self.relative_position_index, (ws^2, ws^2)
            block = name.removesuffix(".relative_position_bias")
            area = SWIN["window_size"] ** 2
            state_dict[f"vision_model.model.{block}.self.relative_position_index"] = (
                module.relative_position_index.view(area, area).clone())
    state_dict["text_model.model.embeddings.position_ids"] = torch.arange(BERT["max_position_embeddings"])[None]
    return state_dict


@pytest.fixture
def original():
    torch.manual_seed(0)
    model = OriginalModel().eval()
    with torch.no_grad():  # distinct values everywhere, so a swapped or skipped key changes the outputs
        for parameter in model.parameters():
            parameter.copy_(torch.randn_like(parameter) * 0.2)
        model.logit_scale.fill_(math.log(1 / 0.07))
    return model


@pytest.fixture
def checkpoint(original, tmp_path):
    """Folder with the original-layout pytorch_model.bin; its state dict is `checkpoint.state_dict`."""
    folder = tmp_path / "medclip"
    folder.mkdir()
    state_dict = original_state_dict(original, tmp_path)
    torch.save(state_dict, folder / "pytorch_model.bin")
    return folder


def write_checkpoint(tmp_path, state_dict, name="edited"):
    path = tmp_path / name / "pytorch_model.bin"
    path.parent.mkdir()
    torch.save(state_dict, path)
    return path


def prompt_batch():
    tokens = make_tokenizer()(TEXTS, padding=True, return_tensors="pt")
    assert (tokens["attention_mask"] == 0).any()  # the batch must contain padding
    torch.manual_seed(1)
    return tokens["input_ids"], tokens["attention_mask"], torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE)


def assert_same_outputs(model: EGMAModel, original: OriginalModel, logit_factor: float = 1.0):
    input_ids, attention_mask, pixel_values = prompt_batch()
    with torch.no_grad():
        expected = original(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask)
        got = model(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask)
    torch.testing.assert_close(got.image_embeds, expected["img_embeds"], atol=1e-5, rtol=0)
    torch.testing.assert_close(got.text_embeds, expected["text_embeds"], atol=1e-5, rtol=0)
    # logits are up to 100 in size: allow a few float32 ulps on top of the 1e-5
    torch.testing.assert_close(got.logits_per_image, expected["logits"] * logit_factor, atol=1e-5, rtol=1e-6)


def test_converted_model_reproduces_the_original_forward(checkpoint, original):
    model, report = load_original_checkpoint(checkpoint, config=egma_config(), return_report=True)
    assert report.complete and not model.training
    assert_same_outputs(model, original)

    # The padding in the batch matters: masked pooling would not reproduce the original text embeddings.
    masked = EGMAModel(egma_config(text_pooling_mask_padding=True)).eval()
    masked.load_state_dict(model.state_dict())
    input_ids, attention_mask, _ = prompt_batch()
    with torch.no_grad():
        unmasked_embeds = model.get_text_features(input_ids, attention_mask).pooler_output
        masked_embeds = masked.get_text_features(input_ids, attention_mask).pooler_output
    assert not torch.allclose(unmasked_embeds, masked_embeds, atol=1e-3)


def test_sentence_and_image_features_match_on_a_report_batch(checkpoint, original, processor):
    model = load_original_checkpoint(checkpoint / "pytorch_model.bin", config=egma_config())
    batch = make_batch(processor)
    with torch.no_grad():
        text = model.get_text_features(batch["input_ids"], batch["attention_mask"])
        image = model.get_image_features(batch["pixel_values"])
        mask = text.sentence_mask
        expected_sentences = original.text_model(batch["input_ids"][mask], batch["attention_mask"][mask])
        expected_images = original.vision_model(batch["pixel_values"])
    torch.testing.assert_close(text.sentence_embeds[mask], expected_sentences, atol=1e-5, rtol=0)
    torch.testing.assert_close(image.pooler_output, expected_images, atol=1e-5, rtol=0)


def test_report_maps_by_prefix_and_lists_known_drops(checkpoint):
    state_dict = torch.load(checkpoint / "pytorch_model.bin", weights_only=True)
    converted, report = convert_medclip_state_dict(state_dict, egma_config())

    assert report.mapped["logit_scale"] == "logit_scale"
    assert report.mapped["vision_model.projection_head.weight"] == "visual_projection.weight"
    assert report.mapped["text_model.projection_head.weight"] == "text_projection.weight"
    bert_key = "encoder.layer.4.output.dense.weight"
    assert report.mapped[f"text_model.model.{bert_key}"] == f"text_model.{bert_key}"
    assert report.mapped["vision_model.model.layernorm.weight"] == "vision_model.layernorm.weight"
    block = "encoder.layers.0.blocks.1"  # a shifted-window block
    renamed_in_transformers_5 = {
        "attention.self.query.weight": "attention.q_proj.weight",
        "attention.output.dense.weight": "attention.o_proj.weight",
        "intermediate.dense.weight": "mlp.fc1.weight",
        "output.dense.weight": "mlp.fc2.weight",
        "attention.self.relative_position_bias_table": "attention.relative_position_bias.relative_position_bias_table",
    }
    for old, new in renamed_in_transformers_5.items():
        assert report.mapped[f"vision_model.model.{block}.{old}"] == f"vision_model.{block}.{new}"

    dropped = set(report.dropped)
    assert "text_model.model.embeddings.position_ids" in dropped
    assert {"text_model.model.pooler.dense.weight", "text_model.model.pooler.dense.bias"} <= dropped
    assert sum(key.endswith(".self.relative_position_index") for key in dropped) == sum(SWIN["depths"])
    assert len(dropped) == 1 + 2 + sum(SWIN["depths"])
    assert len(report.mapped) + len(report.dropped) == len(state_dict)
    assert set(converted) == set(EGMAModel(egma_config()).state_dict())

    text = str(report)
    assert f"{len(report.mapped)} mapped, {len(dropped)} dropped (known), 0 missing, 0 unexpected" in text
    assert "vision_model.model.* -> vision_model.*: " in text and "text_model.model.pooler.dense.weight" in text


def test_egma_training_heads_are_dropped_as_known(checkpoint, original, tmp_path):
    """EGMA's training model adds heads that its released configuration never uses."""
    state_dict = torch.load(checkpoint / "pytorch_model.bin", weights_only=True)
    state_dict["vision_model.projection_head1.weight"] = torch.randn(PROJECTION_DIM, SWIN["embed_dim"])
    state_dict["vision_model.projection_head2.weight"] = torch.randn(PROJECTION_DIM, 2 * SWIN["embed_dim"])
    for key, tensor in nn.MultiheadAttention(PROJECTION_DIM, 1, batch_first=True).state_dict().items():
        state_dict[f"word_local_atten_layer.{key}"] = tensor
    model, report = load_original_checkpoint(write_checkpoint(tmp_path, state_dict), egma_config(), return_report=True)
    assert report.complete
    assert {"vision_model.projection_head1.weight", "word_local_atten_layer.in_proj_weight",
            "word_local_atten_layer.out_proj.bias"} <= set(report.dropped)
    assert_same_outputs(model, original)


def test_unknown_key_raises_naming_it(checkpoint, tmp_path):
    state_dict = torch.load(checkpoint / "pytorch_model.bin", weights_only=True)
    state_dict["text_model.projection_head.bias"] = torch.zeros(PROJECTION_DIM)  # early MedCLIP had a biased head
    with pytest.raises(ValueError, match=r"unexpected[\s\S]*text_model\.projection_head\.bias"):
        load_original_checkpoint(write_checkpoint(tmp_path, state_dict), config=egma_config())


def test_missing_key_raises_naming_it(checkpoint, tmp_path):
    state_dict = torch.load(checkpoint / "pytorch_model.bin", weights_only=True)
    del state_dict["text_model.model.encoder.layer.3.output.dense.weight"]
    with pytest.raises(ValueError, match=r"missing[\s\S]*text_model\.encoder\.layer\.3\.output\.dense\.weight"):
        load_original_checkpoint(write_checkpoint(tmp_path, state_dict), config=egma_config())


def test_non_strict_loads_what_it_can_and_reports_the_rest(checkpoint, original, tmp_path):
    state_dict = torch.load(checkpoint / "pytorch_model.bin", weights_only=True)
    del state_dict["text_model.model.encoder.layer.3.output.dense.weight"]
    state_dict["text_model.projection_head.bias"] = torch.zeros(PROJECTION_DIM)
    model, report = load_original_checkpoint(
        write_checkpoint(tmp_path, state_dict), config=egma_config(), strict=False, return_report=True
    )
    assert report.missing == ["text_model.encoder.layer.3.output.dense.weight"]
    assert report.unexpected == ["text_model.projection_head.bias"]
    assert not report.complete and "missing (not in the checkpoint" in str(report)
    loaded = model.text_model.encoder.layer[3].output.dense.weight
    assert not torch.equal(loaded, original.text_model.model.encoder.layer[3].output.dense.weight)
    torch.testing.assert_close(model.text_projection.weight, original.text_model.projection_head.weight)
    torch.testing.assert_close(model.text_model.encoder.layer[3].output.dense.bias,
                               original.text_model.model.encoder.layer[3].output.dense.bias)


def test_shape_mismatch_names_key_and_both_shapes(checkpoint):
    with pytest.raises(ValueError, match=r"vision_model\.projection_head\.weight -> visual_projection\.weight: "
                                         r"checkpoint \(8, 32\), EGMAModel \(6, 32\)"):
        load_original_checkpoint(checkpoint, config=egma_config(projection_dim=6))


def test_default_config_is_the_released_code_with_projection_dim_from_the_checkpoint(checkpoint, tmp_path):
    state_dict = torch.load(checkpoint / "pytorch_model.bin", weights_only=True)
    config = config_for_original_checkpoint(state_dict)
    assert config.text_pooling_mask_padding is False
    assert config.projection_dim == PROJECTION_DIM
    assert config.vision_config.model_type == "swin" and config.vision_config.embed_dim == 96  # Swin-T
    assert config.text_config.vocab_size == 28996 and config.text_config.num_hidden_layers == 12

    # Here the tiny towers are not the paper's: the default config is checked against the weights, not forced.
    with pytest.raises(ValueError, match=r"shape mismatch[\s\S]*patch_embeddings\.projection\.weight: "
                                         r"checkpoint \(16, 3, 4, 4\), EGMAModel \(96, 3, 4, 4\)"):
        load_original_checkpoint(checkpoint)

    state_dict["text_model.projection_head.weight"] = torch.zeros(PROJECTION_DIM + 1, BERT["hidden_size"])
    with pytest.raises(ValueError, match="projection heads disagree"):
        config_for_original_checkpoint(state_dict)
    with pytest.raises(FileNotFoundError, match="pytorch_model.bin"):
        load_original_checkpoint(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="MedCLIP/EGMA layout"):
        convert_medclip_state_dict({"module.logit_scale": torch.tensor(1.0)}, egma_config())


def test_logit_scale_above_the_egma_clamp_is_noted(checkpoint, original, tmp_path):
    state_dict = torch.load(checkpoint / "pytorch_model.bin", weights_only=True)
    state_dict["logit_scale"] = torch.tensor(4.6052)  # MedCLIP's clamp ceiling, where trained models sit
    with torch.no_grad():
        original.logit_scale.fill_(4.6052)
    model, report = load_original_checkpoint(write_checkpoint(tmp_path, state_dict), egma_config(), return_report=True)
    assert report.complete and any("logit_scale 4.6052" in note for note in report.notes)
    # EGMA clamps at log(100) = 4.60517, the original code at 4.6052: logits differ by that factor only.
    assert_same_outputs(model, original, logit_factor=math.exp(math.log(100.0) - 4.6052))


@pytest.mark.slow
def test_cli_converts_to_a_folder_that_from_pretrained_loads(checkpoint, original, tmp_path):
    config_dir = tmp_path / "config"
    egma_config().save_pretrained(config_dir)
    output_dir = tmp_path / "converted"
    result = subprocess.run(
        [sys.executable, CLI, "--checkpoint", str(checkpoint), "--output_dir", str(output_dir),
         "--config", str(config_dir / "config.json")],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "0 missing, 0 unexpected" in result.stdout and "dropped (known)" in result.stdout
    model = EGMAModel.from_pretrained(output_dir).eval()
    assert model.config.text_pooling_mask_padding is False
    assert_same_outputs(model, original)


def test_cli_refuses_a_partial_checkpoint_unless_allowed(checkpoint, tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("convert_checkpoint", CLI)
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    state_dict = torch.load(checkpoint / "pytorch_model.bin", weights_only=True)
    state_dict["text_model.projection_head.bias"] = torch.zeros(PROJECTION_DIM)
    path = write_checkpoint(tmp_path, state_dict)
    config_dir = tmp_path / "config"
    egma_config().save_pretrained(config_dir)
    args = ["--checkpoint", str(path), "--output_dir", str(tmp_path / "out"), "--config", str(config_dir)]

    assert cli.main(args) == 1
    assert "text_model.projection_head.bias" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()

    assert cli.main([*args, "--allow_partial"]) == 0
    assert "1 unexpected" in capsys.readouterr().out
    assert EGMAModel.from_pretrained(tmp_path / "out").config.projection_dim == PROJECTION_DIM
