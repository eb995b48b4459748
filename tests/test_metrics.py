import math

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from ple_search.data.schema import Task
from ple_search.train.metrics import rmse, roc_auc, task_metrics


def test_auc_matches_sklearn_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(5):
        y = rng.integers(0, 2, 500)
        scores = np.round(rng.standard_normal(500), 1)  # many ties
        ours = roc_auc(torch.tensor(scores, dtype=torch.float32), torch.tensor(y))
        assert abs(ours - roc_auc_score(y, scores.astype(np.float32))) < 1e-6


def test_auc_is_nan_with_one_class_and_rmse_is_exact():
    assert math.isnan(roc_auc(torch.rand(10), torch.ones(10)))
    assert rmse(torch.tensor([1.0, 3.0]), torch.tensor([0.0, 0.0])) == math.sqrt(5)


def test_task_metrics_drop_missing_labels():
    out = torch.tensor([[0.1, 1.0], [0.9, 2.0], [0.5, 5.0]])
    labels = torch.tensor([[0.0, 1.0], [1.0, float("nan")], [float("nan"), 5.0]])
    metrics = task_metrics(out, labels, [Task("a", "binary"), Task("b", "regression")])
    assert metrics == {"a": 1.0, "b": 0.0}
