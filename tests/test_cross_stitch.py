"""Cross-stitch networks (Misra et al., 2016), the second entry of the architecture registry: a
column per task mixed after every layer by a learned [T, T] matrix."""

import numpy as np
import pytest
import torch
import yaml

from helpers import make_dataset, tiny_space
from ple_search.model.cross_stitch import CrossStitch


def columns_alone(model: CrossStitch, x: torch.Tensor) -> torch.Tensor:
    """Task by task, layer by layer: each column an MLP of its own, then its tower."""
    outs = []
    for k in range(model.num_tasks):
        h = x
        for layer in model.columns:
            h = torch.relu(h @ layer.weight[k] + layer.bias[k, 0])
        for m in model.towers.layers:
            h = h @ m.weight[k] + m.bias[k, 0] if hasattr(m, "weight") else m(h)
        outs.append(h[:, 0])
    return torch.stack(outs, 1)


def test_with_identity_stitching_the_tasks_are_independent_networks():
    torch.manual_seed(0)
    model = CrossStitch(6, 3, expert_hidden=[8, 5], tower_hidden=[4])
    with torch.no_grad():
        for unit in model.units:
            unit.alpha.copy_(torch.eye(3))
    x = torch.randn(7, 6)
    torch.testing.assert_close(model(x), columns_alone(model, x), rtol=1e-5, atol=1e-6)


def test_a_tasks_loss_reaches_another_tasks_column_only_through_the_stitching():
    torch.manual_seed(0)
    model = CrossStitch(6, 2, expert_hidden=[8, 5], tower_hidden=[4])
    x = torch.randn(7, 6)
    (grad,) = torch.autograd.grad(model(x)[:, 0].sum(), model.columns[0].weight)
    assert grad[1].abs().sum() > 0  # near-identity start: task 0 already takes some of column 1
    with torch.no_grad():
        for unit in model.units:
            unit.alpha.copy_(torch.eye(2))
    (grad,) = torch.autograd.grad(model(x)[:, 0].sum(), model.columns[0].weight)
    assert grad[1].abs().sum() == 0 and grad[0].abs().sum() > 0


def test_cross_stitch_trains_through_the_module_serves_equal_to_eager_and_is_counted():
    from ple_search.evaluate.report import architecture
    from ple_search.serve.cost import measure_costs
    from ple_search.serve.engines import engine, example_inputs, onnx_available
    from ple_search.train.engine import TrialSettings, train_config

    dataset = make_dataset(n=400)
    hparams = {"architecture": "cross_stitch", "expert_hidden": [16, 8], "tower_hidden": [4], "loss_weighting": "pcgrad", "lr": 0.01, "batch_size": 64}
    module, recorder, _ = train_config(hparams, dataset, TrialSettings(list(dataset.schema.tasks), 2, 2), seed=0)
    assert isinstance(module.model, CrossStitch) and all(np.isfinite(list(recorder.curve[-1].values())))
    cat, num = example_inputs(module, 16)
    eager = engine("eager", module)(cat.numpy(), num.numpy())
    for name in ("torchscript", *(["onnx"] if onnx_available() else [])):
        np.testing.assert_allclose(engine(name, module)(cat.numpy(), num.numpy()), eager, atol=1e-5, rtol=0)
    d = module.encoder.out_dim
    weights = 2 * (d * 16 + 16 * 8) + 2 * (8 * 4 + 4 * 1)  # columns, then towers
    assert measure_costs(module, names=("flops",))["flops"] == weights + 2 * 2 * (16 + 8)  # plus the units' mixing
    assert architecture(module.resolved, 2) == "CrossStitch 2x[16,8] t[4] pcgrad"


@pytest.mark.slow
def test_a_space_can_search_the_architecture_itself(tmp_path, capsys):
    import json

    from ple_search.cli.main import main

    space = tiny_space(epochs=1, params={"architecture": {"type": "categorical", "choices": ["ple", "cross_stitch"]}},
                       enqueue=[{"architecture": "ple"}, {"architecture": "cross_stitch"}])  # fmt: skip
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    storage = str(tmp_path / "s.journal")
    assert main(["run", "--study", "a", "--space", str(tmp_path / "space.yaml"), "--trials", "2", "--storage", storage, "--quiet", "--threads", "1"]) == 0
    capsys.readouterr()
    assert main(["pareto", "--study", "a", "--storage", storage, "--format", "json", "--all"]) == 0
    cells = {r["architecture"].split()[0] for r in json.loads(capsys.readouterr().out)["trials"]}
    assert cells == {"PLE", "CrossStitch"}
