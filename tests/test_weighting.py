"""Each loss-weighting scheme shows its defining behaviour."""

import pytest
import torch

from helpers import make_dataset
from ple_search import PLEModule
from ple_search.model.ple import PLE
from ple_search.train.weighting import SCHEMES, make_weighting

TASKS = ["a", "b"]


def scheme(name, **hparams):
    return make_weighting(name, TASKS, hparams, PLE(4, 2, levels=1))


def test_equal_and_fixed_weights():
    losses = torch.tensor([1.0, 3.0])
    assert scheme("equal")(losses, None) == 4.0
    assert scheme("fixed", task_weights={"a": 2.0, "b": 0.5})(losses, None) == 3.5
    with pytest.raises(ValueError, match="unknown task 'c'"):
        scheme("fixed", task_weights={"c": 1.0})


def test_scheduled_weights_follow_w0_gamma_to_the_epoch():
    s = scheme("scheduled", task_weights=[1.0, 2.0], schedule_gamma=[0.5, 1.0])
    for epoch in range(3):
        s.epoch_end(epoch, torch.ones(2))
    assert torch.allclose(s.weights(), torch.tensor([0.125, 2.0]))


def test_dwa_raises_weight_of_slowest_falling_loss():
    s = scheme("dwa", dwa_temperature=2.0)
    s.epoch_end(0, torch.tensor([1.0, 1.0]))
    assert torch.equal(s.weights(), torch.ones(2))  # needs two epochs of history
    s.epoch_end(1, torch.tensor([0.5, 0.95]))  # task a halves, task b barely moves
    w = s.weights()
    assert w[1] > w[0] and torch.isclose(w.sum(), torch.tensor(2.0))


def _toy_regression(noise, n=2000, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    clean = x @ torch.tensor([1.0, -1.0, 0.5, 0.0])
    y = torch.stack([clean + noise[k] * torch.randn(n, generator=g) for k in range(2)], 1)
    return x, y


def _fit(model, weighting, x, y, lr, steps):
    """Full-batch Adam on MSE with the weighting's total loss (its own parameters learn too)."""
    opt = torch.optim.Adam([*model.parameters(), *weighting.parameters()], lr=lr)
    for _ in range(steps):
        losses = ((model(x) - y) ** 2).mean(0)
        opt.zero_grad()
        weighting(losses, model).backward()
        opt.step()


def test_uncertainty_gives_the_noisier_task_the_smaller_weight():
    torch.manual_seed(0)
    x, y = _toy_regression(noise=[0.1, 2.0])
    s = scheme("uncertainty")
    model = PLE(4, 2, levels=1, experts_per_task=1, shared_experts=1)
    _fit(model, s, x, y, lr=0.03, steps=300)
    weights = s.weights()
    assert s.log_vars[1] > s.log_vars[0] + 1.0 and weights[1] < weights[0] / 3


def _gradient_norm_spread(name):
    torch.manual_seed(0)
    x, y = _toy_regression(noise=[0.1, 0.1])
    y = y * torch.tensor([1.0, 10.0])  # task b's loss, and its gradients, are far larger
    model = PLE(4, 2, levels=1, experts_per_task=1, shared_experts=2)
    s = make_weighting(name, TASKS, {"gradnorm_alpha": 0.5}, model)
    _fit(model, s, x, y, lr=0.01, steps=200)
    losses = ((model(x) - y) ** 2).mean(0)
    shared, columns = model.last_shared_layer()
    norms = torch.stack([
        torch.autograd.grad(s.weights()[k] * losses[k], shared, retain_graph=True)[0][..., columns].norm()
        for k in range(2)
    ])
    return float(norms.max() / norms.min()), s.weights()


def test_gradnorm_brings_per_task_gradient_norms_together():
    equal_spread, _ = _gradient_norm_spread("equal")
    gradnorm_spread, weights = _gradient_norm_spread("gradnorm")
    assert gradnorm_spread < equal_spread / 3
    assert weights[0] > weights[1] and torch.isclose(weights.sum(), torch.tensor(2.0), atol=0.05)


@pytest.mark.parametrize("name", sorted(SCHEMES))
def test_every_scheme_trains_inside_the_module(name):
    import pytorch_lightning as pl

    from ple_search.data import PLEDataModule

    data = make_dataset()
    module = PLEModule(data.schema, {"loss_weighting": name, "task_weights": [1.0, 2.0]} if name in ("fixed", "scheduled") else {"loss_weighting": name})
    pl.Trainer(max_epochs=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
               enable_model_summary=False, num_sanity_val_steps=0).fit(module, PLEDataModule(data, 64))
    assert torch.isfinite(module.weighting.weights()).all()
    assert all(0.0 <= v <= 1.0 for v in module.last_metrics["val"].values())


# Gradient-based balancing: the defining property of each method on toy gradients, and that the
# loss a scheme returns puts exactly the combined direction on the shared parameters.
from ple_search.train.weighting import (  # noqa: E402
    MGDA, AlignedMTL, CAGrad, NashMTL, PCGrad, RandomLossWeighting, min_norm_weights, nash_weights, task_gradients,
)


def conflicting(seed=0, tasks=2, dims=6):
    g = torch.randn(tasks, dims, generator=torch.Generator().manual_seed(seed))
    g[1] = -0.7 * g[0] + 0.3 * g[1]  # task 1 mostly opposes task 0
    return g


@pytest.mark.parametrize("seed", range(5))
def test_pcgrads_update_never_opposes_a_task_gradient(seed):
    g = conflicting(seed)
    assert g[0] @ g[1] < 0
    update = PCGrad(["a", "b"], {}, PLE(4, 2, levels=1)).combine(g)
    assert all(update @ g[k] >= -1e-6 for k in range(2))


@pytest.mark.parametrize("seed", range(3))
def test_mgda_takes_the_min_norm_point_of_the_convex_hull(seed):
    g = conflicting(seed)
    alphas = torch.linspace(0, 1, 10001)
    norms = ((alphas[:, None] * g[0] + (1 - alphas[:, None]) * g[1]) ** 2).sum(1)
    best = alphas[norms.argmin()]
    w = min_norm_weights(g @ g.T)
    assert float(w[0]) == pytest.approx(float(best), abs=2e-4) and float(w.sum()) == pytest.approx(1.0)
    g3 = torch.randn(3, 5, generator=torch.Generator().manual_seed(seed))
    w3 = min_norm_weights(g3 @ g3.T, iterations=500)
    assert (w3 >= 0).all() and float(w3.sum()) == pytest.approx(1.0)
    assert (w3 @ g3).norm() <= min(g3.norm(dim=1).min(), g3.mean(0).norm()) + 1e-5


def test_cagrad_with_c_zero_is_the_equal_weighting_update_and_otherwise_improves_the_worst_task():
    g = conflicting(1)
    model = PLE(4, 2, levels=1)
    assert torch.allclose(CAGrad(["a", "b"], {"cagrad_c": 0.0}, model).combine(g), g.sum(0))
    d = CAGrad(["a", "b"], {"cagrad_c": 0.5}, model).combine(g)
    assert min(float(d @ g[k]) for k in range(2)) > min(float(g.sum(0) @ g[k]) for k in range(2))


@pytest.mark.parametrize("scheme", [PCGrad, MGDA, CAGrad, AlignedMTL, NashMTL])
def test_the_returned_loss_puts_the_combined_direction_on_the_shared_parameters(scheme):
    torch.manual_seed(0)
    model = PLE(4, 2, levels=2, experts_per_task=1, shared_experts=1)
    x = torch.randn(32, 4)
    y = torch.randn(32, 2)
    losses = ((model(x) - y) ** 2).mean(0)
    weighting = scheme(["a", "b"], {}, model).train()
    shared = [p for p in model.levels.parameters()]
    grads = task_gradients(losses, shared)
    torch.manual_seed(1)
    expected = weighting.combine(grads)
    torch.manual_seed(1)  # PCGrad draws its order: the same draw in forward
    weighting(losses, model).backward()
    actual = torch.cat([p.grad.flatten() for p in shared])
    assert torch.allclose(actual, expected, atol=1e-5)
    tower = next(model.towers.parameters())
    assert tower.grad is not None and tower.grad.abs().sum() > 0


def test_rlw_draws_new_weights_summing_to_the_task_count_every_step():
    weighting = RandomLossWeighting(["a", "b", "c"], {}, PLE(4, 3, levels=1)).train()
    losses = torch.ones(3, requires_grad=True)
    drawn = []
    for _ in range(3):
        weighting(losses, None)
        drawn.append(weighting.weights().clone())
    assert all(float(w.sum()) == pytest.approx(3.0) for w in drawn) and not torch.equal(drawn[0], drawn[1])


@pytest.mark.parametrize("tasks", [2, 3])
def test_aligned_mtl_makes_the_gradient_system_perfectly_conditioned(tasks):
    g = torch.randn(tasks, 8, generator=torch.Generator().manual_seed(tasks), dtype=torch.float64)
    aligned = AlignedMTL(["a"] * tasks, {}, PLE(4, tasks, levels=1)).aligned(g)
    singular = torch.linalg.svdvals(aligned)
    assert torch.allclose(singular, torch.linalg.svdvals(g).min().expand_as(singular), rtol=1e-6)
    assert all(float(aligned.sum(0) @ g[k]) > 0 for k in range(tasks))  # a common descent direction


@pytest.mark.parametrize("seed", range(3))
def test_nash_weights_solve_the_bargaining_condition(seed):
    g = torch.randn(3, 6, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    alpha = nash_weights(g @ g.T)
    d = alpha @ g
    assert (alpha > 0).all()
    assert torch.allclose(g @ d, 1.0 / alpha, rtol=1e-6)
    assert NashMTL(["a", "b", "c"], {}, PLE(4, 3, levels=1)).combine(g.float()).shape == (6,)


def test_famo_starts_as_the_gradient_of_the_summed_log_losses():
    from ple_search.train.weighting import FAMO

    losses = torch.tensor([0.5, 2.0], requires_grad=True)
    FAMO(["a", "b"], {}, PLE(4, 2, levels=1)).train()(losses, None).backward()
    log_grad = 1.0 / losses.detach()  # d/dl sum(log l)
    assert torch.allclose(losses.grad, 2 * log_grad / log_grad.sum())


def test_famo_moves_weight_to_the_task_whose_loss_fell_least():
    from ple_search.train.weighting import FAMO

    famo = FAMO(["a", "b"], {}, PLE(4, 2, levels=1)).train()
    for _ in range(5):
        famo(torch.tensor([1.0, 1.0], requires_grad=True), None)
        famo.after_step(torch.tensor([0.5, 0.99]))  # task a fell by half, task b hardly moved
    z = torch.softmax(famo.logits, 0)
    assert z[1] > z[0] + 0.05
    famo(torch.tensor([1.0, 1.0], requires_grad=True), None)
    assert famo.weights()[1] > famo.weights()[0] and float(famo.weights().sum()) == pytest.approx(2.0)


def test_famo_decreases_two_losses_of_very_different_scale_at_a_more_even_rate_than_equal():
    """Two quadratics, one 100x the other's scale, on one shared vector: equal weighting serves the
    big loss; FAMO's log-loss weighting halves both at a similar pace (its purpose)."""
    from ple_search.train.weighting import FAMO, Equal

    def run(scheme):
        torch.manual_seed(0)
        x = torch.zeros(2, requires_grad=True)
        optimizer = torch.optim.Adam([x], lr=0.02)
        weighting = scheme(["a", "b"], {}, PLE(4, 2, levels=1)).train()
        target = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        scale = torch.tensor([100.0, 1.0])

        def losses():
            return scale * ((x - target) ** 2).sum(1) + 0.01

        start = losses().detach()
        for _ in range(60):
            optimizer.zero_grad()
            weighting(losses(), None).backward()
            optimizer.step()
            with torch.no_grad():
                weighting.after_step(losses())
        ratio = (losses().detach() / start).log()
        return float((ratio[0] - ratio[1]).abs())

    assert run(FAMO) < run(Equal)
