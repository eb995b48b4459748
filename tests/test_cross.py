"""Cross experts (DCN-V2, Wang et al., WWW 2021): ``expert_type: cross`` puts cross layers
x_{l+1} = x_0 * (x_l W_l + b_l) + x_l before each expert's MLP, batched across experts."""

import numpy as np
import pytest
import torch

from helpers import make_dataset
from ple_search.core.errors import ConfigError
from ple_search.model.layers import CrossStack
from ple_search.model.ple import PLE


def reference(stack: CrossStack, x0: torch.Tensor) -> torch.Tensor:
    """One expert at a time, one layer at a time, as the paper writes it."""
    outputs = []
    for g in range(x0.shape[0]):
        x = x0[g]
        for layer in stack.layers:
            if isinstance(layer, torch.nn.Sequential):  # low rank: U then V
                down, up = layer
                w_x_b = (x @ down.weight[g]) @ up.weight[g] + up.bias[g, 0]
            else:
                w_x_b = x @ layer.weight[g] + layer.bias[g, 0]
            x = x0[g] * w_x_b + x
        outputs.append(x)
    return torch.stack(outputs)


@pytest.mark.parametrize("rank", [0, 3])
def test_a_cross_expert_with_zero_weights_and_biases_is_the_identity(rank):
    stack = CrossStack(4, 6, layers=3, rank=rank)
    with torch.no_grad():
        for p in stack.parameters():
            p.zero_()
    x = torch.randn(4, 5, 6)
    assert torch.equal(stack(x), x)


@pytest.mark.parametrize("rank", [0, 2])
def test_batched_cross_experts_equal_a_per_expert_reference_in_outputs_and_gradients(rank):
    torch.manual_seed(0)
    stack = CrossStack(5, 7, layers=2, rank=rank)
    x = torch.randn(5, 9, 7, requires_grad=True)
    ours, ref = stack(x), reference(stack, x)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)
    weights = torch.randn_like(ours)
    grads = torch.autograd.grad((ours * weights).sum(), [x, *stack.parameters()])
    ref_grads = torch.autograd.grad((ref * weights).sum(), [x, *stack.parameters()])
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kwargs", [
    {"levels": 2, "experts_per_task": 2, "shared_experts": 2},
    {"levels": 1, "experts_per_task": 0, "shared_experts": 3, "cross_rank": 2},
    {"levels": 2, "experts_per_task": 1, "shared_experts": 0, "cross_layers": 1},
])  # fmt: skip
def test_a_ple_with_cross_experts_crosses_each_experts_own_input(kwargs):
    """Level 0's task expert k*P+j and shared expert s read the model input; their first hidden
    layer is the expert's cross stack then its first linear layer, expert by expert."""
    torch.manual_seed(0)
    model = PLE(6, 2, expert_type="cross", expert_hidden=[8], **kwargs)
    x = torch.randn(4, 6)
    level = model.levels[0]
    task_h, shared_h, _, _ = level.first_layers(None, x)
    for stack, first, got in ((level.task_cross, level.task_cross_in, task_h), (level.shared_cross, level.shared_cross_in, shared_h)):
        if stack is None:
            assert got is None
            continue
        crossed = reference(stack, x.expand(first.weight.shape[0], -1, -1))
        expected = torch.relu(torch.stack([crossed[e] @ first.weight[e] + first.bias[e, 0] for e in range(crossed.shape[0])]))
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert model(x).shape == (4, 2)


def test_cross_experts_train_serve_equal_to_eager_and_are_counted():
    from ple_search.serve.cost import measure_costs
    from ple_search.serve.engines import engine, example_inputs, onnx_available
    from ple_search.train.engine import TrialSettings, train_config
    from ple_search.train.module import PLEModule

    dataset = make_dataset(n=400)
    hparams = {"expert_type": "cross", "cross_layers": 2, "cross_rank": 0, "levels": 2, "experts_per_task": 1, "shared_experts": 1, "lr": 0.01, "batch_size": 64}
    module, recorder, _ = train_config(hparams, dataset, TrialSettings(list(dataset.schema.tasks), 2, 2), seed=0)
    assert all(np.isfinite(list(recorder.curve[-1].values())))
    cat, num = example_inputs(module, 16)
    eager = engine("eager", module)(cat.numpy(), num.numpy())
    for name in ("torchscript", *(["onnx"] if onnx_available() else [])):
        np.testing.assert_allclose(engine(name, module)(cat.numpy(), num.numpy()), eager, atol=1e-5, rtol=0)
    mlp = PLEModule(dataset.schema, {**hparams, "expert_type": "mlp"})
    cost, plain = measure_costs(module, names=("params", "flops")), measure_costs(mlp, names=("params", "flops"))
    d = module.encoder.out_dim
    # first layers are the same size either way; the cross weights come on top: at level 0 three
    # experts cross the d-wide input twice (d x d each), at level 1 the 16-wide level outputs
    assert cost["flops"] - plain["flops"] == 3 * 2 * d * d + 3 * 2 * 16 * 16
    assert cost["params"] > plain["params"]


def test_the_report_names_cross_experts_and_bad_values_name_the_key():
    from ple_search.evaluate.report import architecture
    from ple_search.model.hparams import DEFAULTS, PLEConfig

    hp = {**DEFAULTS, "levels": 1, "expert_type": "cross", "cross_layers": 3, "cross_rank": 4}
    assert architecture(hp, 2) == "CGC L1 3x2+2 cross3r4 [16] t[8] equal"
    assert architecture({**hp, "cross_rank": 0}, 2) == "CGC L1 3x2+2 cross3 [16] t[8] equal"
    assert architecture({**DEFAULTS}, 2) == "PLE L2 3x2+2 [16] t[8] equal"  # MLP experts as before
    with pytest.raises(ConfigError, match="'expert_type' = 'dcn' is invalid"):
        PLEConfig.from_dict({"expert_type": "dcn"})
    with pytest.raises(ConfigError, match="'cross_layers' = 0 is invalid"):
        PLEConfig.from_dict({"expert_type": "cross", "cross_layers": 0})
