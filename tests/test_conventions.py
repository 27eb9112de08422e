"""The conventions `transformers` checks on its own models: weight and buffer init, output flags, `return_dict`, the
classification loss by `problem_type`, and `torch.compile` without graph breaks."""

import pytest
import torch
import torch._dynamo
from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithPooling

from modeling_lejepa import (
    LeJepaConfig,
    LeJepaForImageClassification,
    LeJepaForPreTraining,
    LeJepaForPreTrainingOutput,
    LeJepaModel,
)
from modeling_lejepa.configuration_lejepa import PRESETS

NUM_LAYERS = 2  # of the vit-tiny-test backbone


def tiny_config(**kwargs) -> LeJepaConfig:
    return LeJepaConfig.from_preset("vit-tiny-test", **kwargs)


def batch_norms(model: nn.Module) -> list[nn.BatchNorm1d]:
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm1d)]
    assert norms, "the projector has BatchNorm layers"
    return norms


# ---------------------------------------------------------------------------------------------------- init / load
@pytest.mark.parametrize("source_class", [LeJepaModel, LeJepaForImageClassification])
def test_pretraining_from_backbone_checkpoint_initialises_batchnorm_buffers(tmp_path, source_class):
    """Continuing pretraining from a backbone-only or classification checkpoint: the projector is new, and its
    BatchNorm statistics must be those of a freshly built model (mean 0, variance 1, no batch), not uninitialised
    memory."""
    config = tiny_config(num_labels=3)
    source_class(config).save_pretrained(tmp_path)
    model = LeJepaForPreTraining.from_pretrained(tmp_path)
    fresh = LeJepaForPreTraining(config)
    for norm, reference in zip(batch_norms(model), batch_norms(fresh)):
        for name in ("running_mean", "running_var", "num_batches_tracked", "weight", "bias"):
            torch.testing.assert_close(getattr(norm, name), getattr(reference, name), rtol=0, atol=0, msg=name)
    torch.testing.assert_close(batch_norms(model)[0].running_var, torch.ones(config.projector_hidden_size))
    # the loss in eval mode is finite (it was NaN with the garbage statistics)
    outputs = model.eval()(torch.randn(2, 2, 3, 32, 32), local_pixel_values=torch.randn(2, 2, 3, 16, 16), step=0)
    assert torch.isfinite(outputs.loss)


def test_loading_a_pretraining_checkpoint_keeps_its_batchnorm_statistics(tmp_path):
    model = LeJepaForPreTraining(tiny_config())
    model.train()(torch.randn(4, 2, 3, 32, 32), step=0)  # moves the running statistics
    trained = [n.running_mean.clone() for n in batch_norms(model)]
    assert all(m.abs().sum() > 0 for m in trained)
    model.save_pretrained(tmp_path)
    loaded = LeJepaForPreTraining.from_pretrained(tmp_path)
    for norm, mean in zip(batch_norms(loaded), trained):
        torch.testing.assert_close(norm.running_mean, mean, rtol=0, atol=0)
        assert norm.num_batches_tracked.item() == 1


def test_linear_layers_use_the_config_initializer_range():
    torch.manual_seed(0)
    config = tiny_config(initializer_range=0.5, projector_hidden_size=512)
    weight = LeJepaForPreTraining(config).projector.layers[0].weight
    # trunc_normal_ cuts at +-2 (absolute, as in timm and transformers): +-4 std here, a 0.3% smaller std
    assert weight.std().item() == pytest.approx(0.5, rel=0.03)
    assert weight.abs().max().item() <= 2.0


# ------------------------------------------------------------------------------------------------ output flags
def _inputs_for(model_class) -> tuple[tuple, dict]:
    if model_class is LeJepaForPreTraining:
        return (torch.randn(2, 2, 3, 32, 32),), {"local_pixel_values": torch.randn(2, 3, 3, 16, 16), "step": 0}
    return (torch.randn(2, 3, 32, 32),), {}


ALL_CLASSES = [LeJepaModel, LeJepaForPreTraining, LeJepaForImageClassification]


@pytest.mark.parametrize("model_class", ALL_CLASSES)
def test_output_flags_from_the_top_level_config(tmp_path, model_class):
    model_class(tiny_config(num_labels=3)).save_pretrained(tmp_path)
    model = model_class.from_pretrained(
        tmp_path, output_hidden_states=True, output_attentions=True, attn_implementation="eager"
    ).eval()
    assert model.config.output_hidden_states and model.config.output_attentions
    args, kwargs = _inputs_for(model_class)
    outputs = model(*args, **kwargs)
    num_images = 2 * 2 if model_class is LeJepaForPreTraining else 2  # the global views of 2 images
    assert len(outputs.hidden_states) == NUM_LAYERS + 1  # embeddings, then every layer
    assert len(outputs.attentions) == NUM_LAYERS
    assert outputs.hidden_states[0].shape == (num_images, 17, 32)  # CLS + 4 x 4 patches of 8 px
    assert outputs.attentions[0].shape == (num_images, 2, 17, 17)
    # an explicit argument wins over the config
    outputs = model(*args, output_hidden_states=False, output_attentions=False, **kwargs)
    assert outputs.hidden_states is None and outputs.attentions is None


@pytest.mark.parametrize("model_class", ALL_CLASSES)
def test_no_hidden_states_by_default(model_class):
    model = model_class(tiny_config(num_labels=3)).eval()
    args, kwargs = _inputs_for(model_class)
    outputs = model(*args, **kwargs)
    assert outputs.hidden_states is None and outputs.attentions is None


def test_hidden_state_layer_selection_is_kept():
    """`output_hidden_states=[0, 2]` selects those hidden states, it does not become True. As in `transformers`, the
    tuple keeps every position and holds `None` where a hidden state is not selected."""
    model = LeJepaModel(tiny_config()).eval()
    pixel_values = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        every = model(pixel_values, output_hidden_states=True).hidden_states
        selected = model(pixel_values, output_hidden_states=[0, 2]).hidden_states
    assert len(every) == len(selected) == NUM_LAYERS + 1
    assert selected[1] is None and every[1] is not None
    torch.testing.assert_close(selected[0], every[0])
    torch.testing.assert_close(selected[2], every[2])
    # the same from the config
    config = tiny_config()
    config.output_hidden_states = [0, 2]
    model_from_config = LeJepaModel(config).eval()
    model_from_config.load_state_dict(model.state_dict())
    with torch.no_grad():
        from_config = model_from_config(pixel_values).hidden_states
    assert from_config[1] is None
    torch.testing.assert_close(from_config[2], every[2])


@pytest.mark.parametrize("model_class", ALL_CLASSES)
def test_return_dict_false_gives_the_tuple_of_the_output(model_class):
    model = model_class(tiny_config(num_labels=3)).eval()
    args, kwargs = _inputs_for(model_class)
    with torch.no_grad():
        as_dict = model(*args, **kwargs)
        as_tuple = model(*args, return_dict=False, **kwargs)
        config = tiny_config(num_labels=3, return_dict=False)
        from_config = model_class(config).eval()
        from_config.load_state_dict(model.state_dict())
        config_tuple = from_config(*args, **kwargs)
    expected_type = {LeJepaModel: BaseModelOutputWithPooling, LeJepaForPreTraining: LeJepaForPreTrainingOutput}
    assert isinstance(as_dict, expected_type.get(model_class, object))
    for result in (as_tuple, config_tuple):
        assert isinstance(result, tuple) and len(result) == len(as_dict.to_tuple())
        for got, expected in zip(result, as_dict.to_tuple()):
            torch.testing.assert_close(got, expected)


# ------------------------------------------------------------------------------------------- classification loss
@pytest.mark.parametrize(
    "num_labels, labels, problem_type, reference",
    [
        (3, torch.tensor([0, 2]), "single_label_classification",
         lambda logits, labels: nn.functional.cross_entropy(logits, labels)),
        (1, torch.tensor([0.5, -1.0]), "regression",
         lambda logits, labels: nn.functional.mse_loss(logits.squeeze(-1), labels)),
        (3, torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]), "multi_label_classification",
         lambda logits, labels: nn.functional.binary_cross_entropy_with_logits(logits, labels)),
    ],
    ids=["single-label", "regression", "multi-label"],
)
def test_classification_loss_follows_problem_type(num_labels, labels, problem_type, reference):
    model = LeJepaForImageClassification(tiny_config(num_labels=num_labels)).eval()
    outputs = model(torch.randn(2, 3, 32, 32), labels=labels)
    assert model.config.problem_type == problem_type
    torch.testing.assert_close(outputs.loss, reference(outputs.logits, labels))


def test_explicit_problem_type_is_respected():
    """Float targets with `problem_type="regression"`: a mean squared error per output, where a loss picked from the
    label dtype alone would take binary cross-entropy."""
    model = LeJepaForImageClassification(tiny_config(num_labels=3, problem_type="regression"))
    labels = torch.tensor([[0.5, 2.0, -1.0], [0.0, 1.0, 3.0]])
    outputs = model(torch.randn(2, 3, 32, 32), labels=labels)
    torch.testing.assert_close(outputs.loss, nn.functional.mse_loss(outputs.logits, labels))


# ------------------------------------------------------------------------------------------------ torch.compile
def test_pretraining_forward_compiles_without_graph_break():
    torch._dynamo.reset()
    model = LeJepaForPreTraining(tiny_config())
    pixel_values, local_pixel_values = torch.randn(4, 2, 3, 32, 32), torch.randn(4, 3, 3, 16, 16)
    explanation = torch._dynamo.explain(model)(pixel_values, local_pixel_values=local_pixel_values,
                                               step=torch.tensor(3))
    assert explanation.graph_break_count == 0, [str(r.reason) for r in explanation.break_reasons]
    assert explanation.graph_count == 1


def test_compiled_pretraining_equals_eager_without_recompiling():
    """Same loss and gradients as eager, every step, with one compiled graph for all steps (the step is a tensor)."""
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    torch.manual_seed(0)
    model = LeJepaForPreTraining(tiny_config())
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    pixel_values, local_pixel_values = torch.randn(4, 2, 3, 32, 32), torch.randn(4, 3, 3, 16, 16)
    for step in range(3):
        eager_out = model(pixel_values, local_pixel_values=local_pixel_values, step=torch.tensor(step))
        eager_out.loss.backward()
        eager_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        model.zero_grad()
        compiled_out = compiled(pixel_values, local_pixel_values=local_pixel_values, step=torch.tensor(step))
        compiled_out.loss.backward()
        torch.testing.assert_close(compiled_out.loss, eager_out.loss, rtol=1e-6, atol=0)
        torch.testing.assert_close(compiled_out.sigreg_loss, eager_out.sigreg_loss, rtol=1e-6, atol=0)
        for name, grad in eager_grads.items():
            torch.testing.assert_close(dict(model.named_parameters())[name].grad, grad, rtol=1e-5, atol=1e-7)
        model.zero_grad()
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1


# ------------------------------------------------------------------------------------------------ stochastic depth
@pytest.mark.parametrize("preset", ["vit-small-patch16", "vit-base-patch16", "vit-large-patch14", "vit-huge-patch14"])
def test_vit_presets_train_with_drop_path(preset):
    backbone_config = LeJepaConfig.from_preset(preset).backbone_config
    assert backbone_config.model_type == "dinov2" and backbone_config.drop_path_rate == 0.1
    assert backbone_config._attn_implementation in (None, "sdpa")  # SDPA where available, as for every model


def _small_preset_backbone(drop_path_rate: float) -> LeJepaModel:
    """The vit-small-patch16 preset's backbone settings at a test size (hidden 32, 2 layers, 32 px)."""
    backbone_config = {**PRESETS["vit-small-patch16"]["backbone_config"], "hidden_size": 32, "num_hidden_layers": 2,
                       "num_attention_heads": 2, "image_size": 32, "patch_size": 8, "drop_path_rate": drop_path_rate}
    torch.manual_seed(0)
    return LeJepaModel(LeJepaConfig(backbone_config=backbone_config, global_image_size=32, local_image_size=16))


def test_drop_path_is_active_in_training_and_inactive_in_eval():
    pixel_values = torch.randn(4, 3, 32, 32)
    model = _small_preset_backbone(drop_path_rate=0.5)
    with torch.no_grad():
        model.eval()
        torch.testing.assert_close(model(pixel_values).pooler_output, model(pixel_values).pooler_output, rtol=0,
                                   atol=0)
        model.train()
        first, second = model(pixel_values).pooler_output, model(pixel_values).pooler_output
    assert not torch.allclose(first, second)
    # without drop path the training-mode forward is deterministic: the difference above is stochastic depth
    plain = _small_preset_backbone(drop_path_rate=0.0).train()
    with torch.no_grad():
        torch.testing.assert_close(plain(pixel_values).pooler_output, plain(pixel_values).pooler_output, rtol=0,
                                   atol=0)


def test_dinov2_embedding_is_the_final_normed_cls_token():
    model = _small_preset_backbone(drop_path_rate=0.1).eval()
    with torch.no_grad():
        outputs = model(torch.randn(2, 3, 48, 48))  # any resolution: position embeddings are interpolated
    torch.testing.assert_close(outputs.pooler_output, outputs.last_hidden_state[:, 0])
