"""Embedding sharing (STEM, Su et al., AAAI 2024), key ``embedding_sharing``: one shared set of
tables, a set per task, or both with STEM's all-forward, task-specific-backward gates."""

import numpy as np
import pytest
import torch

from helpers import make_dataset
from ple_search.train.module import PLEModule


def table_grads(module: PLEModule, task: int, cat, num) -> list[float]:
    """The gradient mass task ``task``'s loss puts on each group of embedding tables."""
    module.zero_grad()
    module(cat, num)[:, task].sum().backward()
    g, d = module.encoder.groups, module.encoder.embedding_dim
    grad = module.encoder.embedding.weight.grad.unflatten(-1, (g, d))
    return [float(grad[:, i].abs().sum()) for i in range(g)]


@pytest.mark.parametrize("architecture,sharing", [("ple", "task_specific"), ("ple", "shared_and_specific"), ("adatt", "shared_and_specific")])
def test_a_tasks_loss_leaves_another_tasks_tables_untouched(architecture, sharing):
    """(AdaTT with ``task_specific`` tables fuses every expert, so there each task's loss does
    reach the others' tables: STEM's stopped gradients are what keeps them apart.)"""
    dataset = make_dataset(n=64)
    torch.manual_seed(0)
    module = PLEModule(dataset.schema, {"architecture": architecture, "embedding_sharing": sharing, "levels": 1,
                                        "experts_per_task": 2, "shared_experts": 2})  # fmt: skip
    cat, num = dataset.train.cat[:32].long(), dataset.train.num[:32]
    for task in (0, 1):
        grads = table_grads(module, task, cat, num)  # groups: task 0, task 1, shared
        other = 1 - task
        assert grads[other] == 0 and grads[task] > 0 and grads[2] > 0


def test_stem_gates_read_the_other_tasks_experts_with_their_gradient_stopped():
    dataset = make_dataset(n=64)
    torch.manual_seed(0)
    stem = PLEModule(dataset.schema, {"embedding_sharing": "shared_and_specific", "levels": 1, "experts_per_task": 2, "shared_experts": 1})
    level = stem.model.levels[0]
    assert level.task_gate_size == 2 * 2 + 1  # every task's gate mixes all five experts
    cat, num = dataset.train.cat[:32].long(), dataset.train.num[:32]
    stem.zero_grad()
    stem(cat, num)[:, 0].sum().backward()
    grad = level.task_expert_in.weight.grad  # [T, d, P*h]: task 0's experts' first layers, then task 1's
    assert grad[0].abs().sum() > 0 and grad[1].abs().sum() == 0
    with torch.no_grad():  # yet task 0's output moves with task 1's experts (all forward)
        before = stem(cat, num)[:, 0].clone()
        level.task_expert_in.weight[1] += 1.0
        assert not torch.allclose(stem(cat, num)[:, 0], before)


def test_each_group_has_its_own_tables_and_the_same_numeric_part():
    from ple_search.model.encoders import FeatureEncoder

    torch.manual_seed(0)
    encoder = FeatureEncoder((3, 4), 2, None, 1, groups=3)
    cat, num = torch.tensor([[0, 1], [2, 3]]), torch.tensor([[0.5], [-1.0]])
    out = encoder(cat, num)  # [3, 2, 2*2 + 1]
    table = encoder.embedding.weight.unflatten(-1, (3, 2))
    for g in range(3):
        expected = torch.cat([table[cat[:, 0], g], table[3 + cat[:, 1], g], num], 1)
        torch.testing.assert_close(out[g], expected)


@pytest.mark.parametrize("hparams", [
    {"embedding_sharing": "task_specific"},
    {"embedding_sharing": "shared_and_specific", "levels": 2, "gate_type": "dselect_k"},
    {"architecture": "adatt", "embedding_sharing": "shared_and_specific", "expert_type": "cross", "numeric_encoding": "periodic"},
    {"architecture": "adatt", "gate_type": "dselect_k", "gate_k": 1},
])  # fmt: skip
def test_every_new_choice_serves_equal_to_eager_and_is_counted(hparams):
    from ple_search.evaluate.report import architecture
    from ple_search.serve.cost import measure_costs
    from ple_search.serve.engines import engine, example_inputs, onnx_available
    from ple_search.train.engine import TrialSettings, train_config

    dataset = make_dataset(n=300)
    module, _, _ = train_config({**hparams, "lr": 0.01, "batch_size": 64}, dataset, TrialSettings(list(dataset.schema.tasks), 1, 1), seed=0)
    cat, num = example_inputs(module, 16)
    eager = engine("eager", module)(cat.numpy(), num.numpy())
    for name in ("torchscript", *(["onnx"] if onnx_available() else [])):
        np.testing.assert_allclose(engine(name, module)(cat.numpy(), num.numpy()), eager, atol=1e-5, rtol=0)
    costs = measure_costs(module, names=("params", "flops"))
    assert costs["params"] == sum(p.numel() for p in module.parameters()) and costs["flops"] > 0
    cell = architecture(module.resolved, 2)
    assert ("emb:" in cell) == ("embedding_sharing" in hparams) and ("dselect" in cell) == ("gate_type" in hparams)
