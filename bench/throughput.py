"""Training throughput of ``ple_search.PLE`` against a per-expert reference (PaddleRec's structure).

The reference is written here: one ``nn.Linear`` per expert layer and per gate, Python loops over
tasks and experts, the same math (with correct expert indexing) and the same dense input. Each
step is forward, backward and an Adam step. The machine's own matmul rate is measured in the same
run, so every result is also shown as a fraction of the FLOP roofline for its config.

    python bench/throughput.py [--threads N] [--seconds S]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from ple_search.model.ple import PLE


def mlp(widths: list[int], final_activation: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(a, b))
        if final_activation or i < len(widths) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class ReferencePLE(nn.Module):
    """Straightforward PLE: a module per expert, gate and tower, loops everywhere."""

    def __init__(self, input_dim, num_tasks, levels, experts_per_task, shared_experts, expert_hidden, tower_hidden):
        super().__init__()
        self.t, self.p, self.s = num_tasks, experts_per_task, shared_experts
        self.levels = nn.ModuleList()
        for level in range(levels):
            d = input_dim if level == 0 else expert_hidden[-1]
            last = level == levels - 1
            block = nn.Module()
            block.task_experts = nn.ModuleList(mlp([d, *expert_hidden], True) for _ in range(num_tasks * experts_per_task))
            block.shared_experts = nn.ModuleList(mlp([d, *expert_hidden], True) for _ in range(shared_experts))
            block.task_gates = nn.ModuleList(nn.Linear(d, experts_per_task + shared_experts) for _ in range(num_tasks))
            block.shared_gate = None if last else nn.Linear(d, num_tasks * experts_per_task + shared_experts)
            self.levels.append(block)
        self.towers = nn.ModuleList(mlp([expert_hidden[-1], *tower_hidden, 1], False) for _ in range(num_tasks))

    def forward(self, x):
        task_in, shared_in = [x] * self.t, x
        for block in self.levels:
            shared_out = [e(shared_in) for e in block.shared_experts]
            task_experts, task_out = [], []
            for k in range(self.t):
                own = [block.task_experts[k * self.p + j](task_in[k]) for j in range(self.p)]
                task_experts += own
                gate = torch.softmax(block.task_gates[k](task_in[k]), -1)
                stacked = torch.stack(own + shared_out, 1)
                task_out.append((gate.unsqueeze(-1) * stacked).sum(1))
            if block.shared_gate is not None:
                gate = torch.softmax(block.shared_gate(shared_in), -1)
                shared_in = (gate.unsqueeze(-1) * torch.stack(task_experts + shared_out, 1)).sum(1)
            task_in = task_out
        return torch.cat([tower(h) for tower, h in zip(self.towers, task_in)], 1)


def forward_flops(input_dim, num_tasks, levels, experts_per_task, shared_experts, expert_hidden, tower_hidden) -> float:
    """Multiply-add FLOPs of one sample's forward pass (2 per MAC)."""
    t, p, s = num_tasks, experts_per_task, shared_experts
    total = 0.0
    for level in range(levels):
        d = input_dim if level == 0 else expert_hidden[-1]
        widths = [d, *expert_hidden]
        total += (t * p + s) * sum(2 * a * b for a, b in zip(widths[:-1], widths[1:]))
        total += t * 2 * d * (p + s) + (0 if level == levels - 1 else 2 * d * (t * p + s))
        total += 2 * expert_hidden[-1] * (t * (p + s) + (0 if level == levels - 1 else t * p + s))
    towers = [expert_hidden[-1], *tower_hidden, 1]
    return total + t * sum(2 * a * b for a, b in zip(towers[:-1], towers[1:]))


def matmul_rate(seconds: float) -> float:
    """Sustained float32 matmul FLOP/s of this machine with the current threads."""
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    for _ in range(3):
        a @ b
    runs = []
    for _ in range(5):
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds / 5:
            a @ b
            n += 1
        runs.append(2 * 1024**3 * n / (time.perf_counter() - start))
    return statistics.median(runs)


def step_rate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, seconds: float) -> float:
    """Median training samples/s over several timed windows."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.BCEWithLogitsLoss()

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        optimizer.step()

    for _ in range(5):
        step()
    runs = []
    for _ in range(5):
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds / 5:
            step()
            n += 1
        runs.append(n * x.shape[0] / (time.perf_counter() - start))
    return statistics.median(runs)


CONFIGS = [
    ("(a) PaddleRec census", dict(input_dim=499, num_tasks=2, levels=2, experts_per_task=3, shared_experts=2, expert_hidden=[16], tower_hidden=[8]), [256, 2048]),
    ("(b) large", dict(input_dim=499, num_tasks=4, levels=2, experts_per_task=8, shared_experts=4, expert_hidden=[256, 128], tower_hidden=[64]), [1024]),
]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--seconds", type=float, default=4.0, help="timing per measurement")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    peak = matmul_rate(args.seconds)
    print(f"threads {args.threads}; measured float32 matmul rate {peak / 1e9:.1f} GFLOP/s (1024^3)")
    header = "| config | batch | reference samples/s | PLE samples/s | speed-up | PLE roofline | reference roofline |"
    print(header)
    print("|" + "---|" * 7)
    for name, config, batches in CONFIGS:
        flops = 3 * forward_flops(**config)  # forward + backward (2x)
        for batch in batches:
            x = torch.randn(batch, config["input_dim"])
            y = torch.randint(0, 2, (batch, config["num_tasks"])).float()
            model_kwargs = {k: v for k, v in config.items() if k not in ("input_dim", "num_tasks")}
            ours = PLE(config["input_dim"], config["num_tasks"], **model_kwargs)
            ref = ReferencePLE(**config)
            ref_rate, our_rate = step_rate(ref, x, y, args.seconds), step_rate(ours, x, y, args.seconds)
            print(
                f"| {name} | {batch} | {ref_rate:,.0f} | {our_rate:,.0f} | {our_rate / ref_rate:.2f}x "
                f"| {our_rate * flops / peak:.1%} | {ref_rate * flops / peak:.1%} |"
            )


if __name__ == "__main__":
    main()
