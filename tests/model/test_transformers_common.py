"""transformers' own common model tests (`ModelTesterMixin`, `ConfigTester`) run on EGMA, the way transformers
runs them on CLIPModel: EGMAModel with CLIP-style (B, L) prompts, EGMAModel with (B, M, L) reports and gaze, and
EGMAForImageClassification. The mixins come from the installed transformers version's source distribution
(`tests/model/upstream_transformers.py`). Skipped are only the tests that CLIP's own test class skips for a dual
encoder, each with CLIP's reason, plus what needs hardware this machine lacks (the mixin skips those itself).
"""

import unittest

import numpy as np
import pytest
import torch

from egma_hf import EGMAConfig, EGMAForImageClassification, EGMAModel
from tests.helpers import TINY_BERT, TINY_SWIN
from tests.model.upstream_transformers import import_upstream

pytestmark = pytest.mark.slow

common = import_upstream("test_modeling_common")
ConfigTester = import_upstream("test_configuration_common").ConfigTester

# One Swin stage on 32 px: 4 px patches -> an 8x8 grid of 16-d tokens. With one stage, the tower's output width
# is its `embed_dim` and it has one attention layer and two hidden states, which is what the common tests read.
VISION = dict(TINY_SWIN, depths=[1], num_heads=[2])
GRID = VISION["image_size"] // VISION["patch_size"]


class EGMATextTester:
    """As CLIPModelTester's text_model_tester: one-sentence (B, L) texts, which the common get_text_features
    tests check against a (batch, seq_len, hidden) last_hidden_state."""

    def __init__(self, batch_size: int, seq_length: int):
        self.batch_size = batch_size
        self.seq_length = seq_length
        self.num_hidden_layers = TINY_BERT["num_hidden_layers"]

    def prepare_config_and_inputs_for_common(self):
        shape = [self.batch_size, self.seq_length]
        return None, {"input_ids": common.ids_tensor(shape, TINY_BERT["vocab_size"]),
                      "attention_mask": common.random_attention_mask(shape)}


class EGMAModelTester:
    """Tiny random EGMA and a batch; `reports=True` lays text out as (B, M, L) reports with per-sentence gaze."""

    def __init__(self, parent, reports: bool = False, batch_size: int = 4, seq_length: int = 7, slots: int = 3,
                 is_training: bool = True):
        self.parent = parent
        self.reports = reports
        self.batch_size = batch_size
        self.seq_length = seq_length
        self.slots = slots
        self.is_training = is_training
        self.text_model_tester = EGMATextTester(batch_size, seq_length)
        self.vision_config = {"num_hidden_layers": len(VISION["depths"])}
        self.num_hidden_layers = TINY_BERT["num_hidden_layers"]

    def get_config(self) -> EGMAConfig:
        return EGMAConfig(vision_config=dict(VISION), text_config=dict(TINY_BERT), projection_dim=8,
                          global_loss_weight=1.0, num_labels=3)

    def text_inputs(self) -> dict:
        if not self.reports:
            return self.text_model_tester.prepare_config_and_inputs_for_common()[1]
        shape = [self.batch_size, self.slots, self.seq_length]
        attention_mask = common.random_attention_mask(shape)
        for k in range(self.batch_size):  # report k has k % slots + 1 sentences; the other slots are padding
            attention_mask[k, k % self.slots + 1:] = 0
        return {"input_ids": common.ids_tensor(shape, TINY_BERT["vocab_size"]), "attention_mask": attention_mask}

    def prepare_config_and_inputs_for_common(self):
        pixel_values = common.floats_tensor([self.batch_size, 3, VISION["image_size"], VISION["image_size"]])
        inputs = {**self.text_inputs(), "pixel_values": pixel_values, "return_loss": True}
        if self.reports:
            inputs["gaze_heatmaps"] = common.floats_tensor([self.batch_size, self.slots, GRID, GRID])
            inputs["has_gaze"] = torch.arange(self.batch_size) % 2  # 0/1 flags: half the samples have gaze
        return self.get_config(), inputs


class EGMAImageClassifierTester(EGMAModelTester):
    """As CLIPForImageClassificationModelTester: pixel values only, and the vision tower's sizes."""

    def __init__(self, parent):
        super().__init__(parent)
        self.num_hidden_layers = len(VISION["depths"])
        self.hidden_size = VISION["embed_dim"]
        self.seq_length = GRID * GRID

    def prepare_config_and_inputs_for_common(self):
        config, inputs = super().prepare_config_and_inputs_for_common()
        return config, {"pixel_values": inputs["pixel_values"]}


class EGMACommonTests(common.ModelTesterMixin):
    """Settings and skips of CLIP's `CLIPModelTest`."""

    all_model_classes = (EGMAModel,)
    additional_model_inputs = ["pixel_values", "gaze_heatmaps", "has_gaze"]  # beside the main input, input_ids
    test_resize_embeddings = False
    test_attention_outputs = False
    test_can_init_all_missing_weights_before_2023 = True  # the mixin's flag for "`_init_weights` covers every weight"
    _is_composite = True
    reports = False

    def setUp(self):
        self.model_tester = EGMAModelTester(self, reports=self.reports)
        self.config_tester = ConfigTester(
            self, config_class=EGMAConfig, has_text_modality=False,
            common_properties=["projection_dim", "logit_scale_init_value"],
        )

    def test_config(self):
        self.config_tester.run_common_tests()

    @unittest.skip(reason="CLIPModelTest: hidden states are tested in the individual tower tests")
    def test_hidden_states_output(self):
        pass

    @unittest.skip(reason="CLIPModelTest: inputs_embeds is tested in the individual tower tests")
    def test_inputs_embeds(self):
        pass

    @unittest.skip(reason="CLIPModelTest: retain_grad is tested in the individual tower tests")
    def test_retain_grad_hidden_states_attentions(self):
        pass

    @unittest.skip(reason="CLIPModelTest: a dual encoder has no single input/output embedding")
    def test_model_get_set_embeddings(self):
        pass

    @unittest.skip(
        reason="the upstream test formats its failure message eagerly as `tuple_output - dict_output`, which torch "
        "refuses for bool tensors, and EGMAOutput.sentence_mask is a bool mask (CLIPOutput has none); "
        "tests/model/test_conventions.py checks the same tuple/dict equivalence"
    )
    def test_model_outputs_equivalence(self):
        pass

    def test_initialization(self):
        """CLIPModelTest's override: `logit_scale` starts at log(1/0.07), not at 0 or 1."""
        config, _ = self.model_tester.prepare_config_and_inputs_for_common()
        config = common._config_zero_init(config)
        for model_class in self.all_model_classes:
            model = model_class(config=config)
            for name, param in model.named_parameters():
                if not param.requires_grad:
                    continue
                if name == "logit_scale":
                    self.assertAlmostEqual(param.item(), np.log(1 / 0.07), delta=1e-3)
                else:
                    self.assertIn(((param.data.mean() * 1e9).round() / 1e9).item(), [0.0, 1.0], msg=name)

    def test_model_outputs(self):
        config, inputs = self.model_tester.prepare_config_and_inputs_for_common()
        model = EGMAModel(config).eval()
        with torch.no_grad():
            out = model(**inputs)
        batch = self.model_tester.batch_size
        self.assertEqual(out.logits_per_image.shape, (batch, batch))
        self.assertTrue(torch.isfinite(out.loss))


class EGMAModelTest(EGMACommonTests, unittest.TestCase):
    """CLIP-style inputs: (B, L) one-sentence texts."""


class EGMAModelReportsWithGazeTest(EGMACommonTests, unittest.TestCase):
    """(B, M, L) reports with padding sentence slots and per-sentence gaze on half the samples."""

    reports = True


class EGMAForImageClassificationTest(common.ModelTesterMixin, unittest.TestCase):
    all_model_classes = (EGMAForImageClassification,)
    test_resize_embeddings = False
    test_attention_outputs = False
    test_can_init_all_missing_weights_before_2023 = True

    def setUp(self):
        self.model_tester = EGMAImageClassifierTester(self)

    def _prepare_for_class(self, inputs_dict, model_class, return_labels=False):
        """The mixin adds labels only for classes on transformers' own image-classification list."""
        inputs_dict = super()._prepare_for_class(inputs_dict, model_class, return_labels)
        if return_labels:
            inputs_dict["labels"] = torch.zeros(self.model_tester.batch_size, dtype=torch.long)
        return inputs_dict

    @unittest.skip(reason="an image classifier has no inputs_embeds (as CLIPForImageClassification)")
    def test_inputs_embeds(self):
        pass

    @unittest.skip(reason="an image tower has no token embedding to get or set (as CLIPForImageClassification)")
    def test_model_get_set_embeddings(self):
        pass
