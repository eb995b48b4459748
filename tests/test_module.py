"""PLEModule: losses over each task's own samples, metrics, optimiser settings, checkpoints."""

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from sklearn.metrics import roc_auc_score

from helpers import make_dataset
from ple_search import PLEModule, TrialFailed
from ple_search.data import PLEDataModule


def trainer(**kwargs):
    defaults = dict(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                    enable_model_summary=False, num_sanity_val_steps=0, accelerator="cpu")
    return pl.Trainer(**{**defaults, **kwargs})


def test_missing_label_drops_sample_from_that_task_only():
    module = PLEModule(make_dataset().schema)
    outputs = torch.tensor([[0.3, -1.0], [2.0, 0.5], [-0.7, 0.1]])
    labels = torch.tensor([[1.0, 0.0], [float("nan"), 1.0], [0.0, 1.0]])
    losses = module.task_losses(outputs, labels)
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    assert torch.allclose(losses[0], bce(outputs[[0, 2], 0], labels[[0, 2], 0]))
    assert torch.allclose(losses[1], bce(outputs[:, 1], labels[:, 1]))


def test_validation_logs_per_task_metrics_matching_sklearn():
    data = make_dataset(types=("binary", "regression"))
    module = PLEModule(data.schema, {"batch_size": 64})
    t = trainer()
    t.fit(module, PLEDataModule(data, 64))
    assert set(t.callback_metrics) >= {"val/t0/auc", "val/t1/rmse"}
    module.eval()
    with torch.no_grad():
        out = module(data.val.cat, data.val.num)
    expected = roc_auc_score(data.val.labels[:, 0].numpy(), out[:, 0].numpy())
    assert abs(float(t.callback_metrics["val/t0/auc"]) - expected) < 1e-6
    rmse = torch.sqrt(((out[:, 1] - data.val.labels[:, 1]) ** 2).mean())
    assert abs(float(t.callback_metrics["val/t1/rmse"]) - float(rmse)) < 1e-5


def test_checkpoint_restores_the_model_exactly(tmp_path):
    data = make_dataset()
    module = PLEModule(data.schema, {"levels": 1, "loss_weighting": "uncertainty", "optimizer": "adamw", "lr": 0.01})
    t = trainer(max_epochs=2)
    t.fit(module, PLEDataModule(data, 32))
    path = tmp_path / "model.ckpt"
    t.save_checkpoint(path)
    restored = PLEModule.load_from_checkpoint(path)
    module.eval(), restored.eval()
    with torch.no_grad():
        assert torch.equal(module.predict_outputs(data.test.cat, data.test.num), restored.predict_outputs(data.test.cat, data.test.num))
    assert restored.resolved == module.resolved and restored.schema == module.schema


def test_optimizer_settings_come_from_the_dict():
    module = PLEModule(make_dataset().schema, {"optimizer": "adamw", "lr": 0.02, "weight_decay": 0.1, "loss_weighting": "uncertainty"})
    optimizer = module.configure_optimizers()
    assert isinstance(optimizer, torch.optim.AdamW)
    assert optimizer.param_groups[0]["lr"] == 0.02 and optimizer.param_groups[0]["weight_decay"] == 0.1
    assert optimizer.param_groups[1]["weight_decay"] == 0.0  # learned task weights are not decayed


@pytest.mark.parametrize(
    "hparams, key",
    [({"levls": 2}, "levls"), ({"optimizer": "sgd"}, "optimizer"), ({"lr": -1}, "lr"),
     ({"loss_weighting": "magic"}, "loss_weighting"), ({"embedding_dim": 0}, "embedding_dim"),
     ({"experts_per_task": 0, "shared_experts": 0}, "shared_experts"),
     ({"loss_weighting": "gradnorm", "shared_experts": 0}, "gradnorm")],
)
def test_invalid_hparams_raise_value_error_naming_the_key(hparams, key):
    with pytest.raises(ValueError, match=key):
        PLEModule(make_dataset().schema, hparams)


def test_non_finite_loss_fails_the_run():
    data = make_dataset(types=("regression",))
    data.train.labels[0, 0] = float("inf")
    with pytest.raises(TrialFailed, match="non-finite"):
        trainer().fit(PLEModule(data.schema), PLEDataModule(data, 1000))


def test_training_is_deterministic_for_a_seed():
    data = make_dataset()
    results = []
    for _ in range(2):
        pl.seed_everything(7, verbose=False)
        module = PLEModule(data.schema, {"batch_size": 32})
        trainer(max_epochs=2).fit(module, PLEDataModule(data, 32, seed=7))
        results.append(module.last_metrics["val"])
    assert results[0] == results[1]
    assert np.isfinite(list(results[0].values())).all()


def test_bf16_mixed_precision_trains_on_cpu_and_matches_fp32_auc():
    from ple_search.train.engine import TrialSettings, train_config

    dataset = make_dataset(n=800)
    settings = TrialSettings(list(dataset.schema.tasks), max_epochs=3, patience=3)
    results = {}
    for precision in ("32", "bf16-mixed"):
        _, recorder, _ = train_config({"precision": precision, "lr": 0.01, "batch_size": 64}, dataset, settings, seed=0)
        results[precision] = recorder.curve[recorder.best_epoch]
    for task in ("t0", "t1"):
        assert results["bf16-mixed"][task] == pytest.approx(results["32"][task], abs=0.02)


def test_fp16_mixed_precision_without_a_gpu_fails_the_trial_with_the_reason():
    from ple_search.core.errors import TrialFailed
    from ple_search.train.engine import TrialSettings, train_config

    dataset = make_dataset(n=200)
    with pytest.raises(TrialFailed, match="16-mixed needs a GPU"):
        train_config({"precision": "16-mixed"}, dataset, TrialSettings(list(dataset.schema.tasks), 1, 1), seed=0)
