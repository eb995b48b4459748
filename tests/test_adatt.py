"""AdaTT (Li et al., KDD 2023), the third entry of the architecture registry: every task's fusion
unit mixes every expert, plus the linear residual over its own experts."""

import numpy as np
import pytest
import torch

from helpers import make_dataset
from ple_search.model.adatt import AdaTT


def mlp(layers, h, g):
    """Expert g of a grouped MLP, one layer at a time."""
    for m in layers:
        h = h @ m.weight[g] + m.bias[g, 0] if hasattr(m, "weight") else m(h)
    return h


def adatt_by_hand(model: AdaTT, x: torch.Tensor) -> torch.Tensor:
    """Unit by unit and expert by expert (the paper's equations), with the model's weights."""
    t = model.num_tasks
    inputs = [x] * (t + 1)
    for level in model.levels:
        p, s = level.experts_per_task, level.shared_experts
        owner = [k for k in range(t) for _ in range(p)] + [t] * s
        experts = [mlp(level.experts.layers, inputs[owner[e]], e) for e in range(t * p + s)]
        fused = []
        for u in range(level.units):
            gate = torch.softmax(mlp(level.gates.layers, inputs[u], u), -1)  # [B, E] over every expert
            out = sum(gate[:, e : e + 1] * experts[e] for e in range(len(experts)))
            own = [e for e in range(len(experts)) if owner[e] == u]
            for e in own:  # the linear residual over the unit's own experts
                weight = 1.0 if level.native is None else level.native[u, e]
                out = out + weight * experts[e]
            fused.append(out)
        inputs = fused
    return torch.stack([mlp(model.towers.layers, inputs[k], k)[:, 0] for k in range(t)], 1)


@pytest.mark.parametrize("p,s,levels", [(2, 1, 2), (1, 0, 1), (3, 2, 3), (1, 1, 2)])
def test_adatt_equals_the_papers_fusion_written_unit_by_unit(p, s, levels):
    torch.manual_seed(0)
    model = AdaTT(6, 3, levels=levels, experts_per_task=p, shared_experts=s, expert_hidden=[8, 5], tower_hidden=[4])
    x = torch.randn(7, 6)
    torch.testing.assert_close(model(x), adatt_by_hand(model, x), rtol=1e-5, atol=1e-5)


def test_every_task_reaches_every_tasks_experts_through_its_fusion_gate():
    torch.manual_seed(0)
    model = AdaTT(6, 2, levels=1, experts_per_task=2, shared_experts=0, expert_hidden=[5])
    x = torch.randn(9, 6)
    (grad,) = torch.autograd.grad(model(x)[:, 0].sum(), model.levels[0].experts.layers[0].weight)
    assert grad[2:].abs().sum() > 0  # task 1's experts (2, 3) get task 0's gradient, unlike PLE


def test_adatt_trains_through_the_module_serves_equal_to_eager_and_is_described():
    from ple_search.evaluate.report import architecture
    from ple_search.serve.engines import engine, example_inputs, onnx_available
    from ple_search.train.engine import TrialSettings, train_config

    dataset = make_dataset(n=400)
    hparams = {"architecture": "adatt", "levels": 2, "experts_per_task": 2, "shared_experts": 1, "expert_hidden": [8], "tower_hidden": [4],
               "loss_weighting": "gradnorm", "lr": 0.01, "batch_size": 64}  # fmt: skip
    module, recorder, _ = train_config(hparams, dataset, TrialSettings(list(dataset.schema.tasks), 2, 2), seed=0)
    assert isinstance(module.model, AdaTT) and all(np.isfinite(list(recorder.curve[-1].values())))
    cat, num = example_inputs(module, 16)
    eager = engine("eager", module)(cat.numpy(), num.numpy())
    for name in ("torchscript", *(["onnx"] if onnx_available() else [])):
        np.testing.assert_allclose(engine(name, module)(cat.numpy(), num.numpy()), eager, atol=1e-5, rtol=0)
    assert architecture(module.resolved, 2) == "AdaTT L2 2x2+1 [8] t[4] gradnorm"
