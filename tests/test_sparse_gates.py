"""DSelect-k gates (Hazimeh et al., NeurIPS 2021), key ``gate_type: dselect_k``: static k-sparse
selection through smooth-step binary codes."""

import itertools

import pytest
import torch

from helpers import make_dataset
from ple_search.model.layers import DSELECT_GAMMA, DSELECT_SPEED, Gate, smooth_step


def test_the_smooth_step_is_exactly_binary_outside_its_width_and_cubic_inside():
    z = torch.tensor([-3.0, -DSELECT_GAMMA / 2, 0.0, DSELECT_GAMMA / 4, DSELECT_GAMMA / 2, 3.0], requires_grad=True)
    out = smooth_step(z)
    t = 0.25
    torch.testing.assert_close(out.detach(), torch.tensor([0.0, 0.0, 0.5, -2 * t**3 + 1.5 * t + 0.5, 1.0, 1.0]))
    out.sum().backward()
    assert z.grad[0] == 0 and z.grad[-1] == 0 and z.grad[2] > 0  # no gradient once saturated


def reference_weights(gate: Gate) -> torch.Tensor:
    """Selector by selector, code by code, bit by bit, from the paper's formula."""
    groups, k, m = gate.z.shape
    out = torch.zeros(groups, gate.experts)
    for g in range(groups):
        alpha = torch.softmax(gate.mixing[g], 0)
        for i in range(k):
            bits = smooth_step(gate.z[g, i] * DSELECT_SPEED)
            for code in range(2**m):
                r = 1.0
                for b in range(m):
                    r = r * (bits[b] if (code >> b) & 1 else 1 - bits[b])
                out[g, code % gate.experts] += alpha[i] * r
    return out


@pytest.mark.parametrize("experts", [2, 5, 8])
def test_dselect_weights_equal_the_papers_formula_and_sum_to_one(experts):
    torch.manual_seed(0)
    gate = Gate("dselect_k", experts, 3, groups=2)
    with torch.no_grad():
        gate.z.uniform_(-0.2, 0.2)
        gate.mixing.normal_()
    weights = gate(None)[:, 0]
    torch.testing.assert_close(weights, reference_weights(gate).detach())
    torch.testing.assert_close(weights.sum(-1), torch.ones(2))


def test_a_saturated_gate_puts_all_its_weight_on_at_most_k_experts():
    torch.manual_seed(0)
    for experts, k in itertools.product([3, 6, 8], [1, 2, 3]):
        gate = Gate("dselect_k", experts, k, groups=4)
        with torch.no_grad():
            gate.z.copy_(torch.sign(torch.randn_like(gate.z)) / DSELECT_SPEED)  # every bit at +-1, beyond gamma/2
        weights = gate(None)[:, 0]
        assert ((weights > 0).sum(-1) <= k).all()


@pytest.mark.parametrize("architecture", ["ple", "adatt"])
def test_after_training_each_gate_is_on_at_most_k_experts(architecture):
    from ple_search.train.engine import TrialSettings, train_config

    dataset = make_dataset(n=1000)
    hparams = {"architecture": architecture, "gate_type": "dselect_k", "gate_k": 2, "experts_per_task": 2, "shared_experts": 3, "levels": 2,
               "lr": 0.01, "batch_size": 64}  # fmt: skip
    module, _, _ = train_config(hparams, dataset, TrialSettings(list(dataset.schema.tasks), 2, 2), seed=0)
    module.eval()
    usage = module.model.gate_usage(module.encoder(dataset.test.cat.long(), dataset.test.num))
    gates = [w for level in usage for w in (level["task"], level["shared"]) if w is not None]
    assert gates and all(((w.reshape(-1, w.shape[-1]) > 1e-6).sum(-1) <= 2).all() for w in gates)
    for w in gates:  # at 5 or 7 experts, a softmax gate would be on all of them
        assert w.shape[-1] > 2


def test_a_softmax_gate_is_unchanged_by_the_gate_key():
    gate = Gate("softmax", 4, 2, groups=1)
    raw = torch.randn(1, 3, 4)
    torch.testing.assert_close(gate(raw), torch.softmax(raw, -1))
    assert not list(gate.parameters())
