"""ModelConfig / LossConfig validation and structured-config use, the loss worked out by hand, health metrics."""
from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf

from dcell_core.nn import DCellOutput, LossConfig, ModelConfig, build_dcell, dcell_loss, prediction_health
from dcell_core.ontology.hierarchy import Hierarchy


def test_defaults_are_the_paper_values():
    cfg, loss = ModelConfig(), LossConfig()
    assert (cfg.width_basis, cfg.min_width, cfg.width_ratio) == ("contained", 20, 0.3)
    assert (cfg.norm_type, cfg.norm_order, cfg.activation) == ("batch", "act_norm", "tanh")
    assert (cfg.subsystem_layers, cfg.learnable_embedding_dim, cfg.num_attention_heads) == (1, 0, 0)
    assert (loss.alpha, loss.aux_reduction) == (0.3, "sum")
    cfg.validate(), loss.validate()


@pytest.mark.parametrize("field, value", [
    ("width_basis", "leaf"), ("norm_type", "group"), ("norm_order", "both"), ("activation", "sigmoid"),
    ("min_width", 0), ("width_ratio", 0.0), ("init_range", -0.1), ("subsystem_layers", 0),
    ("learnable_embedding_dim", -1), ("num_attention_heads", -2), ("bucket_overhead", -1)])
def test_invalid_model_values_name_the_field(field, value):
    with pytest.raises(ValueError, match=f"{field}: .*{value}"):
        ModelConfig(**{field: value}).validate()


def test_attention_heads_must_divide_the_token_width():
    with pytest.raises(ValueError, match="num_attention_heads: token width 8 is not divisible by 3"):
        ModelConfig(learnable_embedding_dim=8, num_attention_heads=3).validate()
    ModelConfig(learnable_embedding_dim=8, num_attention_heads=4).validate()


@pytest.mark.parametrize("field, value", [("alpha", -0.5), ("aux_reduction", "max"), ("weight_decay", -1.0)])
def test_invalid_loss_values_name_the_field(field, value):
    with pytest.raises(ValueError, match=f"{field}: .*{value}"):
        LossConfig(**{field: value}).validate()


def test_build_rejects_an_invalid_config():
    h = Hierarchy.from_mappings({"R": ["A"]}, {"A": ["a"], "R": ["r"]})
    with pytest.raises(ValueError, match="activation: 'swish'"):
        build_dcell(h, ModelConfig(activation="swish"))


def test_configs_are_structured_config_compatible():
    schema = OmegaConf.structured(ModelConfig)
    merged = OmegaConf.merge(schema, OmegaConf.from_dotlist(["norm_type=layer", "min_width=8"]))
    cfg = OmegaConf.to_object(merged)
    assert isinstance(cfg, ModelConfig) and cfg.norm_type == "layer" and cfg.min_width == 8
    with pytest.raises(Exception, match="nonexistent"):
        OmegaConf.merge(schema, OmegaConf.from_dotlist(["nonexistent=1"]))
    with pytest.raises(Exception, match="min_width"):
        OmegaConf.merge(schema, OmegaConf.from_dotlist(["min_width=wide"]))
    assert isinstance(OmegaConf.to_object(OmegaConf.structured(LossConfig)), LossConfig)


def test_widths_follow_the_width_rule():
    h = Hierarchy.from_mappings({"R": ["A", "B"]}, {"A": [f"a{i}" for i in range(70)], "B": ["b"], "R": ["r"]})
    # contained: A 70 genes -> ceil(21) = 21, B 1 gene -> 20, R 72 genes -> ceil(21.6) = 22
    contained = build_dcell(h, ModelConfig())
    assert contained.sizes.widths == (21, 20, 22)
    # direct: R has one direct gene -> min width 20
    assert build_dcell(h, ModelConfig(width_basis="direct")).sizes.widths == (21, 20, 20)
    # fan-in: children's widths + direct genes x features per gene
    assert contained.sizes.fan_in(2) == 21 + 20 + 1
    assert build_dcell(h, ModelConfig(learnable_embedding_dim=3)).sizes.fan_in(2) == 21 + 20 + 3


def hand_output() -> tuple[DCellOutput, torch.Tensor]:
    y = torch.tensor([0.5, -1.0, 2.0, 0.0])
    # root off by 1 everywhere -> MSE 1; three aux terms off by 1, 2, 3 -> MSEs 1, 4, 9
    aux = y.unsqueeze(1) + torch.tensor([1.0, 2.0, 3.0])
    return DCellOutput(y + 1.0, aux), y


def test_loss_components_worked_out_by_hand():
    out, y = hand_output()
    total, parts = dcell_loss(out, y, LossConfig(alpha=0.3))
    assert math.isclose(parts["root"], 1.0, rel_tol=1e-6) and math.isclose(parts["aux_sum"], 14.0, rel_tol=1e-6)
    assert math.isclose(parts["aux_mean"], 14.0 / 3, rel_tol=1e-6)
    assert math.isclose(parts["aux_weighted"], 0.3 * 14.0, rel_tol=1e-6)
    assert float(parts["l2"]) == 0.0
    assert math.isclose(total, 1.0 + 4.2, rel_tol=1e-6)
    _, mean_parts = dcell_loss(out, y, LossConfig(alpha=0.3, aux_reduction="mean"))
    assert math.isclose(mean_parts["aux_weighted"], 0.3 * 14.0 / 3, rel_tol=1e-6)
    _, no_aux = dcell_loss(out, y, LossConfig(alpha=0.0))
    assert math.isclose(no_aux["total"], 1.0, rel_tol=1e-6)


def test_l2_counts_only_the_given_weights():
    out, y = hand_output()
    weights = [torch.tensor([[1.0, 2.0]]), torch.tensor([3.0])]  # ||W||^2 = 1 + 4 + 9 = 14
    _, parts = dcell_loss(out, y, LossConfig(weight_decay=0.5), weights)
    assert math.isclose(parts["l2"], 7.0, rel_tol=1e-6)
    with pytest.raises(ValueError, match="decay_weights"):
        dcell_loss(out, y, LossConfig(weight_decay=0.5))


def test_model_l2_excludes_biases_and_norm_parameters():
    h = Hierarchy.from_mappings({"R": ["A"]}, {"A": ["a1", "a2"], "R": ["r"]})
    for fast in (True, False):
        model = build_dcell(h, ModelConfig(), fast=fast)
        decayed = {id(w) for w in model.decay_weights()}
        for name, p in model.named_parameters():
            is_weight_matrix = ("weight" in name and "norm" not in name)
            assert (id(p) in decayed) == is_weight_matrix, name


def test_loss_rejects_mismatched_targets():
    out, y = hand_output()
    with pytest.raises(ValueError, match="targets have shape"):
        dcell_loss(out, y[:3], LossConfig())


def test_prediction_health_flags_collapse():
    y = torch.linspace(-1, 1, 32)
    healthy = prediction_health(y * 0.8, y)
    assert math.isclose(healthy["std_ratio"], 0.8, rel_tol=1e-6) and healthy["collapsed"] == 0.0
    collapsed = prediction_health(torch.full((32,), 0.3) + 1e-4 * y, y)
    assert collapsed["std_ratio"] < 0.01 and collapsed["collapsed"] == 1.0
    assert math.isnan(prediction_health(y, torch.zeros(32))["std_ratio"])
    with pytest.raises(ValueError, match="same shape"):
        prediction_health(y, y[:4])
