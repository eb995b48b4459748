"""Loss-weighting schemes: how per-task losses combine into the one loss that is minimised.

Each scheme is one ``LossWeighting`` subclass registered by its ``name``; a new scheme is one
class here plus its test. ``forward(losses, model)`` returns the total loss for one step,
``epoch_end(epoch, mean_losses)`` lets epoch-level schemes update, and ``weights()`` reports the
current per-task weights for logging.
"""

from __future__ import annotations

from typing import Any, ClassVar, Mapping, Sequence

import torch
from torch import Tensor, nn

from ple_search.core.errors import ConfigError
from ple_search.model.base import MultiTaskModel
from ple_search.model.hparams import DEFAULTS, LOSS_WEIGHTINGS, WEIGHTING_KEYS


def per_task(key: str, value: Any, task_names: Sequence[str], default: float) -> Tensor:
    """Per-task floats from None (default), a scalar, a list in task order or a ``{task: value}`` dict."""
    n = len(task_names)
    if value is None:
        return torch.full((n,), float(default))
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return torch.full((n,), float(value))
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - set(task_names))
        if unknown:
            raise ConfigError(
                f"hyperparameter '{key}' names unknown task '{unknown[0]}': tasks are {list(task_names)}"
            )
        return torch.tensor([float(value.get(t, default)) for t in task_names])
    if isinstance(value, (list, tuple)) and len(value) == n:
        return torch.tensor([float(v) for v in value])
    raise ConfigError(
        f"hyperparameter '{key}' = {value!r} is invalid: give a number, a list of {n} numbers "
        f"or a mapping from task names {list(task_names)} to numbers"
    )


class LossWeighting(nn.Module):
    """Interface of a weighting scheme."""

    name: ClassVar[str]
    keys: ClassVar[tuple[str, ...]] = ()  # the hyperparameters (PLEConfig keys) the scheme reads

    def __init__(self, task_names: Sequence[str], hparams: Mapping[str, Any], model: MultiTaskModel) -> None:
        super().__init__()
        self.num_tasks = len(task_names)

    def weights(self) -> Tensor:
        """Current per-task weights, ``[T]``."""
        raise NotImplementedError

    def forward(self, losses: Tensor, model: MultiTaskModel) -> Tensor:
        """Total loss from the per-task losses ``[T]``."""
        return (self.weights().to(losses) * losses).sum()

    def epoch_end(self, epoch: int, mean_losses: Tensor) -> None:
        """Called after training epoch ``epoch`` (0-based) with its mean per-task losses."""

    #: True for schemes that learn from the loss decrease of each step: the module then measures
    #: the same batch's losses again after the optimiser step and passes them to ``after_step``.
    wants_losses_after_step: ClassVar[bool] = False

    def after_step(self, losses: Tensor) -> None:
        """Called after an optimiser step with the step's batch losses ``[T]`` re-measured."""


class Equal(LossWeighting):
    """Every task weighs 1."""

    name = "equal"

    def weights(self) -> Tensor:
        return torch.ones(self.num_tasks)


class Fixed(LossWeighting):
    """Constant user-given weights (``task_weights``)."""

    name = "fixed"
    keys = ("task_weights",)

    def __init__(self, task_names: Sequence[str], hparams: Mapping[str, Any], model: MultiTaskModel) -> None:
        super().__init__(task_names, hparams, model)
        self.register_buffer("_weights", per_task("task_weights", hparams.get("task_weights"), task_names, 1.0))

    def weights(self) -> Tensor:
        return self._weights


class Scheduled(LossWeighting):
    """The PLE paper's schedule w_k(t) = w_k0 * gamma_k^t, t the epoch
    (``task_weights`` gives w_k0, ``schedule_gamma`` gives gamma_k)."""

    name = "scheduled"
    keys = ("task_weights", "schedule_gamma")

    def __init__(self, task_names: Sequence[str], hparams: Mapping[str, Any], model: MultiTaskModel) -> None:
        super().__init__(task_names, hparams, model)
        self.register_buffer("initial", per_task("task_weights", hparams.get("task_weights"), task_names, 1.0))
        self.register_buffer("gamma", per_task("schedule_gamma", hparams.get("schedule_gamma"), task_names, 1.0))
        self.register_buffer("epoch", torch.zeros(()))

    def weights(self) -> Tensor:
        return self.initial * self.gamma**self.epoch

    def epoch_end(self, epoch: int, mean_losses: Tensor) -> None:
        self.epoch.fill_(epoch + 1)


class Uncertainty(LossWeighting):
    """Kendall et al. 2018: learned log-variances s_k, loss sum_k 0.5 exp(-s_k) L_k + 0.5 s_k.
    A noisier task settles at a larger s_k, hence a smaller weight."""

    name = "uncertainty"

    def __init__(self, task_names: Sequence[str], hparams: Mapping[str, Any], model: MultiTaskModel) -> None:
        super().__init__(task_names, hparams, model)
        self.log_vars = nn.Parameter(torch.zeros(self.num_tasks))

    def weights(self) -> Tensor:
        return 0.5 * torch.exp(-self.log_vars.detach())

    def forward(self, losses: Tensor, model: MultiTaskModel) -> Tensor:
        return (0.5 * torch.exp(-self.log_vars) * losses + 0.5 * self.log_vars).sum()


class DynamicWeightAverage(LossWeighting):
    """Liu et al. 2019: w_k = T softmax_k(r_k / temperature), r_k = L_k(t-1) / L_k(t-2) from epoch
    mean losses; a task whose loss falls slowest gets the largest weight."""

    name = "dwa"
    keys = ("dwa_temperature",)

    def __init__(self, task_names: Sequence[str], hparams: Mapping[str, Any], model: MultiTaskModel) -> None:
        super().__init__(task_names, hparams, model)
        self.temperature = float(hparams.get("dwa_temperature", DEFAULTS["dwa_temperature"]))
        self.register_buffer("_weights", torch.ones(self.num_tasks))
        self.register_buffer("history", torch.full((2, self.num_tasks), float("nan")))

    def weights(self) -> Tensor:
        return self._weights

    def epoch_end(self, epoch: int, mean_losses: Tensor) -> None:
        self.history[0] = self.history[1]
        self.history[1] = mean_losses.detach().to(self.history)
        if not torch.isnan(self.history).any():
            ratio = self.history[1] / self.history[0].clamp_min(1e-12)
            self._weights.copy_(self.num_tasks * torch.softmax(ratio / self.temperature, dim=0))


class GradNorm(LossWeighting):
    """Chen et al. 2018: learned weights trained so that each task's gradient norm on the last
    shared layer tracks mean_norm * (relative inverse training rate)^alpha; renormalised to sum T."""

    name = "gradnorm"
    keys = ("gradnorm_alpha",)

    def __init__(self, task_names: Sequence[str], hparams: Mapping[str, Any], model: MultiTaskModel) -> None:
        super().__init__(task_names, hparams, model)
        if model.last_shared_layer() is None:
            raise ConfigError(
                "hyperparameter 'loss_weighting' = 'gradnorm' needs 'shared_experts' >= 1: "
                "GradNorm balances gradients on the last shared layer"
            )
        self.alpha = float(hparams.get("gradnorm_alpha", DEFAULTS["gradnorm_alpha"]))
        self.task_weights = nn.Parameter(torch.ones(self.num_tasks))
        self.register_buffer("initial_losses", torch.full((self.num_tasks,), float("nan")))

    def weights(self) -> Tensor:
        return self.task_weights.detach()

    def gradient_norms(self, losses: Tensor, model: MultiTaskModel) -> Tensor:
        """||d(w_k L_k)/dW|| on the last shared layer W, differentiable w.r.t. the weights."""
        shared, columns = model.last_shared_layer()
        norms = []
        for k in range(self.num_tasks):
            (grad,) = torch.autograd.grad(
                self.task_weights[k] * losses[k], shared, retain_graph=True, create_graph=True, allow_unused=True
            )
            norms.append(grad[..., columns].norm() if grad is not None else losses.new_zeros(()))
        return torch.stack(norms)

    def forward(self, losses: Tensor, model: MultiTaskModel) -> Tensor:
        with torch.no_grad():
            self.task_weights.clamp_(min=1e-3)
            self.task_weights.mul_(self.num_tasks / self.task_weights.sum())
        if torch.isnan(self.initial_losses).any():
            self.initial_losses.copy_(losses.detach())
        weighted = (self.task_weights.detach() * losses).sum()
        if not torch.is_grad_enabled() or not self.training:
            return weighted
        norms = self.gradient_norms(losses, model)
        ratio = losses.detach() / self.initial_losses.clamp_min(1e-12)
        target = (norms.mean() * (ratio / ratio.mean()) ** self.alpha).detach()
        (weight_grad,) = torch.autograd.grad((norms - target).abs().sum(), self.task_weights, retain_graph=True)
        # The weights learn only from the GradNorm objective: a value-neutral surrogate carries its gradient.
        surrogate = (self.task_weights * weight_grad).sum()
        return weighted + surrogate - surrogate.detach()


class RandomLossWeighting(LossWeighting):
    """Lin et al. 2022 (RLW): every step draws weights w = T softmax(z), z ~ N(0, I); a strong
    baseline that the learned schemes should beat."""

    name = "rlw"

    def __init__(self, task_names: Sequence[str], hparams: Mapping[str, Any], model: MultiTaskModel) -> None:
        super().__init__(task_names, hparams, model)
        self.register_buffer("_weights", torch.ones(self.num_tasks), persistent=False)

    def weights(self) -> Tensor:
        return self._weights

    def forward(self, losses: Tensor, model: MultiTaskModel) -> Tensor:
        if self.training and torch.is_grad_enabled():
            self._weights = self.num_tasks * torch.softmax(torch.randn(self.num_tasks, device=losses.device), dim=0)
        return (self._weights.to(losses) * losses).sum()


def task_gradients(losses: Tensor, shared: Sequence[nn.Parameter]) -> Tensor:
    """``[T, P]``: each task loss's gradient on the flattened shared parameters (one backward pass
    per task, the graph kept for the real backward)."""
    rows = []
    for k in range(losses.numel()):
        grads = torch.autograd.grad(losses[k], shared, retain_graph=True, allow_unused=True)
        rows.append(torch.cat([(g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(grads, shared)]))
    return torch.stack(rows)


def min_norm_weights(gram: Tensor, iterations: int = 50) -> Tensor:
    """The convex weights of the minimum-norm point of the gradients' convex hull, from their Gram
    matrix ``[T, T]``: the closed form for two tasks, Frank-Wolfe (as MGDA) otherwise."""
    t = gram.shape[0]
    if t == 1:
        return gram.new_ones(1)
    if t == 2:
        denominator = gram[0, 0] + gram[1, 1] - 2 * gram[0, 1]
        a = ((gram[1, 1] - gram[0, 1]) / denominator).clamp(0.0, 1.0) if denominator > 0 else gram.new_tensor(0.5)
        return torch.stack([a, 1 - a])
    w = gram.new_full((t,), 1.0 / t)
    for _ in range(iterations):
        k = int(torch.argmin(gram @ w))
        e = torch.zeros_like(w)
        e[k] = 1.0
        d = e - w
        # exact line search on ||G(w + s d)||^2 over s in [0, 1]
        denominator = d @ gram @ d
        if denominator <= 0:
            break
        step = float((-(w @ gram @ d) / denominator).clamp(0.0, 1.0))
        if step < 1e-8:
            break
        w = w + step * d
    return w


class GradientBalancing(LossWeighting):
    """Base of the schemes that combine per-task gradients of the shared extraction network (the
    parameters every task shares, ``model.shared_parameters()``) into one update direction. The returned
    loss keeps each task's gradient on its own tower (and the summed gradient on the embeddings)
    and carries the combined direction on the shared parameters through a value-neutral
    surrogate. One extra backward pass per task per step (``bench/weighting.py``)."""

    def weights(self) -> Tensor:
        return self._last_weights

    def __init__(self, task_names: Sequence[str], hparams: Mapping[str, Any], model: MultiTaskModel) -> None:
        super().__init__(task_names, hparams, model)
        self.register_buffer("_last_weights", torch.ones(self.num_tasks), persistent=False)

    def combine(self, grads: Tensor) -> Tensor:
        """The update direction ``[P]`` for the shared parameters from the task gradients ``[T, P]``,
        on the scale of their sum (what equal weighting would apply)."""
        raise NotImplementedError

    def forward(self, losses: Tensor, model: MultiTaskModel) -> Tensor:
        total = losses.sum()
        if not (self.training and torch.is_grad_enabled() and losses.requires_grad):
            return total
        shared = list(model.shared_parameters())
        grads = task_gradients(losses, shared)
        correction = (self.combine(grads) - grads.sum(0)).detach()
        surrogate, offset = losses.new_zeros(()), 0
        for parameter in shared:
            n = parameter.numel()
            surrogate = surrogate + (parameter * correction[offset : offset + n].view_as(parameter)).sum()
            offset += n
        return total + surrogate - surrogate.detach()


class PCGrad(GradientBalancing):
    """Yu et al. 2020, gradient surgery: each task gradient, in turn, loses its component along
    every other task gradient it conflicts with (negative inner product), in a random order; the
    update is the sum of the projected gradients."""

    name = "pcgrad"

    def combine(self, grads: Tensor) -> Tensor:
        projected = grads.clone()
        for i in range(grads.shape[0]):
            for j in torch.randperm(grads.shape[0]).tolist():
                if j == i:
                    continue
                dot = projected[i] @ grads[j]
                if dot < 0:
                    projected[i] -= dot / grads[j].dot(grads[j]).clamp_min(1e-20) * grads[j]
        return projected.sum(0)


class MGDA(GradientBalancing):
    """Sener & Koltun 2018 (MGDA): the update is the minimum-norm point of the convex hull of the
    task gradients (a common descent direction), scaled by T. Computed on the shared extraction
    network's parameters rather than MGDA-UB's shared representation: PLE has no single
    representation that every task reads (each task's gate mixes its own)."""

    name = "mgda"

    def combine(self, grads: Tensor) -> Tensor:
        weights = min_norm_weights(grads @ grads.T)
        self._last_weights = self.num_tasks * weights.detach()
        return self.num_tasks * (weights @ grads)


class CAGrad(GradientBalancing):
    """Liu et al. 2021 (conflict-averse gradient descent): d = g0 + sqrt(phi) g_w / ||g_w||, with
    g0 the average gradient, phi = c^2 ||g0||^2 and w on the simplex minimising
    g_w.g0 + sqrt(phi) ||g_w|| (projected gradient steps); scaled by T / (1 + c). c = 0 is the
    average gradient (equal weighting)."""

    name = "cagrad"
    keys = ("cagrad_c",)

    def __init__(self, task_names: Sequence[str], hparams: Mapping[str, Any], model: MultiTaskModel) -> None:
        super().__init__(task_names, hparams, model)
        self.c = float(hparams.get("cagrad_c", DEFAULTS["cagrad_c"]))

    def combine(self, grads: Tensor) -> Tensor:
        t = grads.shape[0]
        g0 = grads.mean(0)
        if self.c == 0:
            return t * g0
        gram = (grads @ grads.T).double()
        g0_norm = float(g0.double().norm())
        sqrt_phi = self.c * g0_norm
        logits = torch.zeros(t, dtype=torch.float64, requires_grad=True)
        optimiser = torch.optim.Adam([logits], lr=0.1)
        mean = torch.full((t,), 1.0 / t, dtype=torch.float64)
        for _ in range(30):
            w = torch.softmax(logits, 0)
            objective = w @ gram @ mean + sqrt_phi * torch.sqrt(w @ gram @ w + 1e-12)
            optimiser.zero_grad()
            objective.backward()
            optimiser.step()
        w = torch.softmax(logits.detach(), 0).to(grads.dtype)
        gw = w @ grads
        direction = g0 + sqrt_phi / gw.norm().clamp_min(1e-12) * gw
        return t * direction / (1 + self.c)


class AlignedMTL(GradientBalancing):
    """Senushkin et al. 2023 (Aligned-MTL): the task gradients' matrix G is replaced by
    sigma_min U V^T (all singular values equal to G's smallest non-zero one, so the system of
    gradients has condition number 1); the update is the sum of the aligned gradients. Computed
    from the Gram matrix G G^T = V L V^T: aligned = sigma_min V L^-1/2 V^T G."""

    name = "aligned"

    def aligned(self, grads: Tensor) -> Tensor:
        gram = (grads @ grads.T).double()
        values, vectors = torch.linalg.eigh(gram)
        keep = values > values.max().clamp_min(1e-30) * 1e-10
        values, vectors = values[keep], vectors[:, keep]
        sigma_min = values.min().sqrt()
        balance = sigma_min * vectors @ torch.diag(values.rsqrt()) @ vectors.T
        return (balance.to(grads.dtype) @ grads)

    def combine(self, grads: Tensor) -> Tensor:
        return self.aligned(grads).sum(0)


def nash_weights(gram: Tensor, iterations: int = 50) -> Tensor:
    """alpha > 0 with (G G^T) alpha = 1 / alpha elementwise (Nash-MTL's bargaining solution),
    by damped Newton steps on F(alpha) = M alpha - 1/alpha, kept positive."""
    m = gram.double()
    alpha = 1.0 / m.diagonal().clamp_min(1e-20).sqrt()
    for _ in range(iterations):
        residual = m @ alpha - 1.0 / alpha
        if residual.abs().max() < 1e-10 * (1.0 / alpha).abs().max():
            break
        step = torch.linalg.solve(m + torch.diag(1.0 / alpha**2), residual)
        scale = 1.0
        while (alpha - scale * step).min() <= 0 and scale > 1e-6:
            scale /= 2
        alpha = alpha - scale * step
    return alpha.to(gram.dtype)


class NashMTL(GradientBalancing):
    """Navon et al. 2022 (Nash-MTL): the update d = sum_k alpha_k g_k with alpha the Nash
    bargaining solution, g_i . d = 1 / alpha_i for every task (solved iteratively, no solver
    dependency); a task with a large gradient gets a small weight."""

    name = "nash"

    def combine(self, grads: Tensor) -> Tensor:
        alpha = nash_weights(grads @ grads.T)
        self._last_weights = alpha.detach()
        direction = alpha @ grads
        # The solution's norm does not shrink with the gradients (alpha ~ 1/|g|): like the paper's
        # gradient clipping, the step is capped at the equal-weighting step's norm.
        cap = grads.sum(0).norm()
        norm = direction.norm()
        return direction * (cap / norm) if norm > cap else direction


class FAMO(LossWeighting):
    """Liu et al. 2023 (FAMO), balanced loss decrease at the cost of one extra forward pass per
    step instead of one backward pass per task. With task logits xi and z = softmax(xi), the step
    descends sum_k z_k log l_k, i.e. the task gradients weighted z_k / l_k (rescaled here to sum to
    T, the scale of equal weighting). After the optimiser step the same batch's losses l' are
    measured again; xi then takes an Adam step (learning rate ``famo_lr``, weight decay
    ``famo_gamma``, the paper's beta and gamma) along the softmax Jacobian times the log-loss
    decrease log l - log l', so a task whose loss fell least gains weight. Our losses are bounded
    below by 0, the paper's per-task minimum."""

    name = "famo"
    keys = ("famo_lr", "famo_gamma")
    wants_losses_after_step = True
    EPSILON: ClassVar[float] = 1e-8

    def __init__(self, task_names: Sequence[str], hparams: Mapping[str, Any], model: MultiTaskModel) -> None:
        super().__init__(task_names, hparams, model)
        self.register_buffer("logits", torch.zeros(self.num_tasks))  # xi
        self.register_buffer("_weights", torch.ones(self.num_tasks), persistent=False)
        self.lr = float(hparams.get("famo_lr", DEFAULTS["famo_lr"]))
        self.gamma = float(hparams.get("famo_gamma", DEFAULTS["famo_gamma"]))
        self._before: Tensor | None = None
        self._optimizer: torch.optim.Optimizer | None = None

    def weights(self) -> Tensor:
        return self._weights

    def forward(self, losses: Tensor, model: MultiTaskModel) -> Tensor:
        if not (self.training and torch.is_grad_enabled()):
            return losses.sum()
        shifted = losses.detach().float().clamp_min(self.EPSILON)
        w = torch.softmax(self.logits, 0) / shifted
        self._weights = self.num_tasks * w / w.sum()
        self._before = shifted
        return (self._weights.to(losses) * losses).sum()

    def after_step(self, losses: Tensor) -> None:
        if self._before is None:
            return
        decrease = self._before.log() - losses.detach().float().clamp_min(self.EPSILON).log()
        z = torch.softmax(self.logits, 0)
        if self._optimizer is None:  # created here, after the module has moved to its device
            self._optimizer = torch.optim.Adam([self.logits], lr=self.lr, weight_decay=self.gamma)
        self.logits.grad = z * (decrease - z @ decrease)  # (diag(z) - z z^T) decrease
        self._optimizer.step()
        self.logits.grad = None
        self._before = None


SCHEMES: dict[str, type[LossWeighting]] = {
    cls.name: cls
    for cls in (Equal, Fixed, Scheduled, Uncertainty, DynamicWeightAverage, GradNorm, RandomLossWeighting, PCGrad, MGDA, CAGrad, AlignedMTL, NashMTL, FAMO)
}


assert {name: cls.keys for name, cls in SCHEMES.items()} == LOSS_WEIGHTINGS, "model.hparams.LOSS_WEIGHTINGS names these classes"
HPARAM_KEYS = WEIGHTING_KEYS  # every key that configures task balancing


def make_weighting(name: str, task_names: Sequence[str], hparams: Mapping[str, Any], model: MultiTaskModel) -> LossWeighting:
    """Instantiate the scheme registered as ``name``."""
    if name not in SCHEMES:
        raise ConfigError(
            f"hyperparameter 'loss_weighting' = {name!r} is invalid: must be one of {sorted(SCHEMES)}"
        )
    return SCHEMES[name](task_names, hparams, model)
