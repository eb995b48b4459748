"""PLE routing, initialisation, special cases and validation."""

import pytest
import torch

from ple_search.model.ple import PLE, GroupedLinear

CONFIGS = [
    dict(levels=2, experts_per_task=3, shared_experts=2),
    dict(levels=1, experts_per_task=3, shared_experts=2),  # CGC
    dict(levels=3, experts_per_task=2, shared_experts=1, expert_hidden=(12, 6), gate_hidden=(5,)),
    dict(levels=2, experts_per_task=0, shared_experts=3),  # multi-level MMoE
    dict(levels=1, experts_per_task=0, shared_experts=1),  # shared-bottom
    dict(levels=2, experts_per_task=2, shared_experts=0),  # no sharing at all
    dict(levels=2, experts_per_task=1, shared_experts=1, tower_hidden=()),
]


def _linears(mlp):
    return [m for m in mlp.layers if isinstance(m, GroupedLinear)]


def _run_stack(mlp, group, h, final_activation):
    layers = _linears(mlp)
    for i, lin in enumerate(layers):
        h = h @ lin.weight[group] + lin.bias[group, 0]
        if final_activation or i < len(layers) - 1:
            h = torch.relu(h)
    return h


def _first(level, branch, k=None):
    """(weight, bias) of a first layer, for task k or the shared branch, in either layout:
    level 0 keeps every expert's columns in ``expert_in`` and every gate's in ``gate_in``."""
    t, p, s, h = level.num_tasks, level.experts_per_task, level.shared_experts, level.hidden
    if level.shared_input:
        if branch == "experts":
            cols = slice(k * p * h, (k + 1) * p * h) if k is not None else slice(t * p * h, (t * p + s) * h)
            return level.expert_in.weight[:, cols], level.expert_in.bias[cols]
        g = level.task_gate_first
        cols = slice(k * g, (k + 1) * g) if k is not None else slice(t * g, None)
        return level.gate_in.weight[:, cols], level.gate_in.bias[cols]
    if branch == "experts":
        layer = level.task_expert_in if k is not None else level.shared_expert_in
    else:
        layer = level.task_gate_in if k is not None else level.shared_gate_in
    return (layer.weight[k], layer.bias[k, 0]) if k is not None else (layer.weight, layer.bias)


def naive_forward(model: PLE, x: torch.Tensor) -> torch.Tensor:
    """Per-expert reference with explicit indexing: task k's expert p is ``k * P + p``."""
    t = model.num_tasks
    task_in, shared_in = [x] * t, x
    for level in model.levels:
        p, s, h = level.experts_per_task, level.shared_experts, level.hidden
        shared_experts, task_out, all_task_experts = [], [], []
        for j in range(s):
            w, b = _first(level, "experts")
            first = torch.relu(shared_in @ w[:, j * h : (j + 1) * h] + b[j * h : (j + 1) * h])
            shared_experts.append(_run_stack(level.shared_expert_stack, j, first, True))
        for k in range(t):
            experts = []
            for j in range(p):
                w, b = _first(level, "experts", k)
                first = torch.relu(task_in[k] @ w[:, j * h : (j + 1) * h] + b[j * h : (j + 1) * h])
                experts.append(_run_stack(level.task_experts, k * p + j, first, True))
            all_task_experts += experts
            candidates = experts + shared_experts
            if level.task_gate_size:
                w, b = _first(level, "gates", k)
                logits = task_in[k] @ w + b
                if level.task_gates is not None:
                    logits = _run_stack(level.task_gates, k, torch.relu(logits), False)
                gate = torch.softmax(logits, -1)
                task_out.append(sum(gate[:, [e]] * out for e, out in enumerate(candidates)))
            else:
                task_out.append(candidates[0])
        if level.has_shared_out:
            everything = all_task_experts + shared_experts
            if level.shared_gate_size:
                w, b = _first(level, "gates")
                logits = shared_in @ w + b
                if level.shared_gate is not None:
                    logits = _run_stack(level.shared_gate, 0, torch.relu(logits), False)
                gate = torch.softmax(logits, -1)
                shared_in = sum(gate[:, [e]] * out for e, out in enumerate(everything))
            else:
                shared_in = everything[0]
        task_in = task_out
    return torch.cat([_run_stack(model.towers, k, task_in[k], False) for k in range(t)], dim=1)


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("num_tasks", [1, 2, 3])
def test_batched_forward_matches_per_expert_reference(config, num_tasks):
    torch.manual_seed(0)
    model = PLE(10, num_tasks, **config)
    x = torch.randn(17, 10)
    out = model(x)
    assert out.shape == (17, num_tasks)
    expected = naive_forward(model, x)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    weights = torch.randn(num_tasks)
    ours = torch.autograd.grad((out * weights).sum(), list(model.parameters()), allow_unused=True)
    reference = torch.autograd.grad((expected * weights).sum(), list(model.parameters()), allow_unused=True)
    for name, a, b in zip([n for n, _ in model.named_parameters()], ours, reference):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("num_tasks", [1, 3])
def test_every_parameter_receives_gradient(config, num_tasks):
    torch.manual_seed(1)
    model = PLE(10, num_tasks, **config, activation="tanh")  # no dead ReLU units: this tests wiring
    model(torch.randn(64, 10)).sum().backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_cgc_gradient_of_a_task_stays_in_its_own_experts_gate_and_tower():
    torch.manual_seed(2)
    t, p, s, h = 3, 3, 2, 16
    model = PLE(10, t, levels=1, experts_per_task=p, shared_experts=s, expert_hidden=(h,))
    level = model.levels[0]
    x = torch.randn(128, 10)
    g = level.task_gate_first
    for k in range(t):
        model.zero_grad()
        model(x)[:, k].sum().backward()
        expert_grad = level.expert_in.weight.grad  # columns: task 0's experts, ..., shared experts
        gate_grad = level.gate_in.weight.grad  # columns: task 0's gate, ..., task T-1's gate
        tower_grads = [lin.weight.grad for lin in _linears(model.towers)]
        for other in range(t):
            if other == k:
                continue
            assert torch.all(expert_grad[:, other * p * h : (other + 1) * p * h] == 0), f"task {k} leaks into task {other}'s experts"
            assert torch.all(gate_grad[:, other * g : (other + 1) * g] == 0), f"task {k} leaks into task {other}'s gate"
            assert all(torch.all(grad[other] == 0) for grad in tower_grads)
        for j in range(p):  # each of task k's own experts, including the last one PaddleRec never trains
            cols = slice((k * p + j) * h, (k * p + j + 1) * h)
            assert expert_grad[:, cols].abs().sum() > 0, f"task {k} expert {j} gets no gradient"
        assert gate_grad[:, k * g : (k + 1) * g].abs().sum() > 0, "task gate gets no gradient"
        for j in range(s):
            cols = slice((t * p + j) * h, (t * p + j + 1) * h)
            assert expert_grad[:, cols].abs().sum() > 0, f"shared expert {j} gets no gradient"


def test_random_initialisation_breaks_symmetry():
    torch.manual_seed(3)
    model = PLE(10, 2, levels=1, experts_per_task=3, shared_experts=2)
    w = model.levels[0].expert_in.weight
    experts = [w[:, j * 16 : (j + 1) * 16] for j in range(3)]
    assert not torch.allclose(experts[0], experts[1]) and not torch.allclose(experts[1], experts[2])
    assert w.std() > 0.05
    logits = torch.randn(32, 10) @ model.levels[0].gate_in.weight[:, :5]
    gate = torch.softmax(logits, -1)
    assert not torch.allclose(gate, torch.full_like(gate, 1 / 5), atol=1e-3), "gates start uniform"


def test_special_cases_have_expected_structure():
    shared_bottom = PLE(10, 2, levels=1, experts_per_task=0, shared_experts=1)
    level = shared_bottom.levels[0]
    assert level.expert_in.weight.shape == (10, 16) and level.gate_in is None  # one expert, no gates
    mmoe = PLE(10, 2, levels=1, experts_per_task=0, shared_experts=4)
    assert mmoe.levels[0].task_gate_size == 4 and mmoe.levels[0].task_experts is None
    single = PLE(10, 1, levels=2)
    assert single(torch.randn(4, 10)).shape == (4, 1)
    two_level = PLE(10, 2, levels=2)
    assert two_level.levels[0].shared_gate_size == 8 and two_level.levels[1].shared_gate_size == 0


@pytest.mark.parametrize(
    "kwargs, key",
    [
        (dict(levels=0), "levels"),
        (dict(experts_per_task=0, shared_experts=0), "experts_per_task"),
        (dict(expert_hidden=()), "expert_hidden"),
        (dict(expert_hidden=(16, 0)), "expert_hidden"),
        (dict(tower_hidden=(-1,)), "tower_hidden"),
        (dict(gate_hidden=("a",)), "gate_hidden"),
        (dict(activation="swish2"), "activation"),
        (dict(dropout=1.0), "dropout"),
        (dict(shared_experts=-1), "shared_experts"),
    ],
)
def test_invalid_hyperparameters_name_the_key(kwargs, key):
    with pytest.raises(ValueError, match=key):
        PLE(10, 2, **kwargs)


def test_ple_takes_only_its_own_keys():
    model = PLE(10, 2, levels=1, expert_hidden=[8])
    assert len(model.levels) == 1
    with pytest.raises(ValueError, match="unknown hyperparameter 'lr': PLE takes levels, "):
        PLE(10, 2, lr=0.1)
