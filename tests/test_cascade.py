"""Dependent tasks (``depends_on``) and the task relations between them: independent (the
conditional model trained on the parent's positives), ESMM (Ma et al., SIGIR 2018) and AITM (Xi
et al., KDD 2021)."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from helpers import make_cascade
from ple_search.core.errors import DataError
from ple_search.train.module import PLEModule


def module_for(relation: str, **hparams) -> tuple[PLEModule, torch.Tensor, torch.Tensor, torch.Tensor]:
    dataset = make_cascade()
    torch.manual_seed(0)
    module = PLEModule(dataset.schema, {"task_relation": relation, **hparams})
    cat, num, labels = dataset.train.cat[:200].long(), dataset.train.num[:200], dataset.train.labels[:200]
    return module, cat, num, labels


def test_esmm_loss_and_outputs_follow_the_papers_formula():
    module, cat, num, labels = module_for("esmm")
    raw = module.model(module.encoder(cat, num))  # [B, 2]: click logit, conditional buy logit
    p_ctr, p_cvr = torch.sigmoid(raw[:, 0]), torch.sigmoid(raw[:, 1])
    served = module.head.serve(module.head(raw))
    torch.testing.assert_close(served, torch.stack([p_ctr, p_ctr * p_cvr, p_cvr], 1), rtol=1e-5, atol=1e-6)
    # L = BCE(pCTR, y_click) + BCE(pCTR * pCVR, y_click & y_buy), both over every impression
    expected = torch.stack([F.binary_cross_entropy(p_ctr, labels[:, 0]), F.binary_cross_entropy(p_ctr * p_cvr, labels[:, 1])])
    torch.testing.assert_close(module.task_losses(module.head(raw), labels), expected, rtol=1e-4, atol=1e-5)


def test_independent_trains_the_conditional_model_on_the_parents_positives_only():
    module, cat, num, labels = module_for("independent")
    raw = module.model(module.encoder(cat, num))
    clicked = labels[:, 0] == 1
    expected = F.binary_cross_entropy_with_logits(raw[clicked, 1], labels[clicked, 1])
    torch.testing.assert_close(module.task_losses(module.head(raw), labels)[1], expected, rtol=1e-5, atol=1e-6)


def test_aitm_outputs_the_joint_and_adds_the_calibrator():
    module, cat, num, labels = module_for("aitm", calibration_weight=0.5)
    raw = module.model(module.encoder(cat, num))  # [B, 2]: click logit, joint buy logit
    p_click, p_joint = torch.sigmoid(raw[:, 0]), torch.sigmoid(raw[:, 1])
    served = module.head.serve(module.head(raw))
    torch.testing.assert_close(served[:, :2], torch.stack([p_click, p_joint], 1))
    torch.testing.assert_close(served[:, 2], (p_joint / p_click).clamp(max=1.0), rtol=1e-4, atol=1e-5)
    calibrator = torch.relu(p_joint - p_click).mean()
    expected = F.binary_cross_entropy(p_joint, labels[:, 1]) + 0.5 * calibrator
    torch.testing.assert_close(module.task_losses(module.head(raw), labels)[1], expected, rtol=1e-4, atol=1e-5)


def test_the_ait_unit_equals_the_papers_attention_written_out():
    from ple_search.model.towers import InformationTransfer

    torch.manual_seed(0)
    unit = InformationTransfer(6)
    parent, own = torch.randn(5, 6), torch.randn(5, 6)
    passed = torch.relu(parent @ unit.transfer.weight + unit.transfer.bias)
    rows = []
    for b in range(5):
        candidates = [passed[b], own[b]]
        h = lambda layer, u: u @ layer.weight + layer.bias  # noqa: E731
        scores = torch.stack([h(unit.keys, u) @ h(unit.queries, u) / math.sqrt(6) for u in candidates])
        w = torch.softmax(scores, 0)
        rows.append(sum(w[i] * h(unit.values, u) for i, u in enumerate(candidates)))
    torch.testing.assert_close(unit(parent, own), torch.stack(rows), rtol=1e-5, atol=1e-6)


def test_aitms_towers_pass_the_parents_information_to_the_child_only():
    module, cat, num, _ = module_for("aitm")
    towers = module.model.towers
    assert len(towers.transfers) == 1
    x = module.encoder(cat, num)
    before = module.model(x).detach()
    with torch.no_grad():
        towers.transfers[0].transfer.bias += 1.0
    after = module.model(x).detach()
    assert torch.equal(before[:, 0], after[:, 0]) and not torch.allclose(before[:, 1], after[:, 1])


def test_aitms_calibrator_holds_the_joint_below_the_parent_after_training():
    from ple_search.train.engine import TrialSettings, train_config

    dataset = make_cascade(n=3000, seed=1)
    share = {}
    for weight in (0.0, 5.0):
        module, _, _ = train_config({"task_relation": "aitm", "calibration_weight": weight, "lr": 0.01, "batch_size": 128},
                                    dataset, TrialSettings(list(dataset.schema.tasks), 3, 3), seed=0)  # fmt: skip
        module.eval()
        with torch.no_grad():
            served = module.predict_outputs(dataset.test.cat.long(), dataset.test.num)
        share[weight] = float((served[:, 1] <= served[:, 0] + 1e-4).float().mean())
    assert share[5.0] >= 0.99 and share[5.0] >= share[0.0]


def test_metrics_give_the_joint_auc_on_every_row_and_the_conditional_on_the_parents_positives():
    from sklearn.metrics import roc_auc_score

    from ple_search.train.metrics import task_metrics

    dataset = make_cascade()
    rng = np.random.default_rng(0)
    labels = dataset.test.labels
    outputs = torch.tensor(rng.standard_normal((len(labels), 3)), dtype=torch.float32)
    metrics = task_metrics(outputs, labels, dataset.schema.tasks)
    clicked = labels[:, 0].numpy() == 1
    assert metrics["buy"] == pytest.approx(roc_auc_score(labels[:, 1].numpy(), outputs[:, 1].numpy()))
    assert metrics["buy@click"] == pytest.approx(roc_auc_score(labels[clicked, 1].numpy(), outputs[clicked, 2].numpy()))
    assert dataset.schema.output_names == ["click", "buy", "buy@click"]


@pytest.mark.parametrize("relation", ["esmm", "aitm", "independent"])
def test_every_relation_trains_and_serves_every_output_equal_to_eager(relation):
    from ple_search.serve.cost import measure_costs
    from ple_search.serve.engines import engine, example_inputs, onnx_available
    from ple_search.train.engine import TrialSettings, evaluate, train_config

    dataset = make_cascade()
    module, recorder, _ = train_config({"task_relation": relation, "tower_hidden": [8], "lr": 0.01, "batch_size": 64}, dataset,
                                       TrialSettings(list(dataset.schema.tasks), 1, 1), seed=0)  # fmt: skip
    assert set(recorder.curve[-1]) >= {"click", "buy", "buy@click"}
    assert set(evaluate(module, dataset.test)) == {"click", "buy", "buy@click"}
    cat, num = example_inputs(module, 16)
    eager = engine("eager", module)(cat.numpy(), num.numpy())
    assert eager.shape == (16, 3)
    for name in ("torchscript", *(["onnx"] if onnx_available() else [])):
        np.testing.assert_allclose(engine(name, module)(cat.numpy(), num.numpy()), eager, atol=1e-5, rtol=0)
    if relation == "aitm":  # the transfer unit's layers and attention are counted
        plain, _, _ = train_config({"task_relation": "esmm", "tower_hidden": [8], "batch_size": 64}, dataset, TrialSettings(list(dataset.schema.tasks), 1, 1), seed=0)
        extra = measure_costs(module, names=("flops",))["flops"] - measure_costs(plain, names=("flops",))["flops"]
        assert extra == 4 * 8 * 8 + 4 * 8


def test_a_child_given_on_its_parents_positives_only_is_the_same_joint_label():
    from ple_search.data.dataset import joint_labels

    tasks = [{"name": "click"}, {"name": "buy", "depends_on": "click"}]
    full = np.array([[1, 1], [1, 0], [0, 0], [np.nan, np.nan]], dtype=np.float32)
    sparse = np.array([[1, 1], [1, 0], [0, np.nan], [np.nan, np.nan]], dtype=np.float32)
    np.testing.assert_array_equal(joint_labels(full.copy(), tasks, "t"), joint_labels(sparse, tasks, "t"))


def test_a_positive_child_on_a_negative_parent_is_one_line_with_the_count_and_first_row():
    from ple_search.data.dataset import joint_labels

    tasks = [{"name": "click"}, {"name": "buy", "depends_on": "click"}]
    labels = np.array([[1, 1], [0, 1], [0, 0], [0, 1]], dtype=np.float32)
    with pytest.raises(DataError, match=r"t: task 'buy' depends on 'click' but is 1 where 'click' is 0 on 2 rows \(first: row 2\)"):
        joint_labels(labels, tasks, "t")


def cascade_table(folder, n: int = 500, bad_row: int | None = None):
    """A user's CSV with a click -> buy cascade, buy given only on clicked rows (empty elsewhere)."""
    import pandas as pd

    rng = np.random.default_rng(0)
    country = rng.choice(["de", "fr", "us"], n)
    price = rng.exponential(10, n).round(2)
    z = (country == "de") * 1.0 + np.log1p(price) * 0.4 - 1.0 + rng.normal(0, 0.7, n)
    click = (z > 0).astype(int)
    buy = np.where(click == 1, (z + rng.normal(0, 0.7, n) > 0.8).astype(int).astype(str), "")
    if bad_row is not None:
        buy[np.flatnonzero(click == 0)[bad_row]] = "1"
    pd.DataFrame({"country": country, "price": price, "ts": np.arange(n), "click": click, "buy": buy}).to_csv(folder / "events.csv", index=False)
    (folder / "events.yaml").write_text(
        "file: events.csv\ncategorical: [country]\nnumeric: [price]\n"
        "tasks:\n  - {name: click, type: binary}\n  - {name: buy, type: binary, depends_on: click}\n"
        "split: {by: ts, fractions: [0.6, 0.2, 0.2]}\n"
    )
    return folder / "events.yaml"


def test_a_dependent_tasks_table_gives_the_same_joint_labels_through_both_data_paths(tmp_path):
    from ple_search.data import table

    spec = table.read_spec(cascade_table(tmp_path))
    fast, reference = table._build_columnar(spec, spec["file"], {}), table._build_pandas(spec, spec["file"], {})
    assert fast.schema == reference.schema and fast.schema.tasks[1].depends_on == "click"
    for name in ("train", "val", "test"):
        a, b = fast.split(name).labels, reference.split(name).labels
        assert torch.equal(a, b) and not torch.isnan(a).any()  # empty cells of unclicked rows are 0 now
        assert bool(((a[:, 1] == 1) <= (a[:, 0] == 1)).all())


def test_a_table_with_a_purchase_without_a_click_is_refused_with_one_line(tmp_path, capsys):
    from ple_search.cli.main import main

    spec = cascade_table(tmp_path, bad_row=3)
    space = tmp_path / "space.yaml"
    space.write_text(f"dataset: {{name: {spec}}}\nbudget: {{max_epochs: 1, patience: 1}}\n")
    assert main(["run", "--study", "c", "--space", str(space), "--trials", "1", "--storage", str(tmp_path / "s.journal"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "task 'buy' depends on 'click' but is 1 where 'click' is 0 on 1 rows (first: row " in err[0]
    assert not (tmp_path / "s.journal").exists()


@pytest.mark.slow
def test_predict_writes_the_joint_and_the_conditional_probability_of_a_dependent_task(tmp_path, capsys):
    import pandas as pd

    from ple_search.cli.main import main

    from helpers import run_export_train

    spec = cascade_table(tmp_path)
    space = {"dataset": {"name": str(spec)}, "sampler": {"name": "random", "seed": 0}, "budget": {"max_epochs": 2, "patience": 2},
             "fixed": {"batch_size": 64, "task_relation": "esmm"}, "objectives": ["click", "buy", "buy@click"]}  # fmt: skip
    metrics = run_export_train(tmp_path, space, "c")
    raw = pd.read_csv(tmp_path / "events.csv", dtype=str, keep_default_na=False)
    raw.drop(columns=["click", "buy"]).tail(30).to_csv(tmp_path / "rows.csv", index=False)
    capsys.readouterr()
    assert main(["predict", "--model", str(tmp_path / "model"), "--input", str(tmp_path / "rows.csv"), "--output", str(tmp_path / "p.csv")]) == 0
    scores = pd.read_csv(tmp_path / "p.csv")
    assert list(scores.columns[-3:]) == ["click", "buy", "buy@click"]
    np.testing.assert_allclose(scores["buy"], scores["click"] * scores["buy@click"], rtol=1e-4, atol=1e-6)
    assert "buy@click" in str(metrics)


def test_every_task_relation_is_a_registered_class_and_only_aitm_transfers():
    from ple_search.model.hparams import TASK_RELATIONS
    from ple_search.model.relations import RELATIONS, TaskRelation

    assert tuple(RELATIONS) == TASK_RELATIONS
    assert all(issubclass(cls, TaskRelation) and cls.name == name for name, cls in RELATIONS.items())
    assert [name for name, cls in RELATIONS.items() if cls.transfer] == ["aitm"]
