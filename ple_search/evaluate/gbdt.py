"""The GBDT yardstick: one gradient-boosted trees model per task on the same features and splits
as the networks, so a front can be judged against what a tabular practitioner would try first.

Protocol, per task: scikit-learn's ``HistGradientBoostingClassifier`` (binary) or ``Regressor``
with native categorical support for the categorical codes (vocabularies of at most 255 values;
larger ones enter as ordinal codes), the standardised numeric features as they are, rows without
a label dropped. A small fixed grid (learning rate x leaves x L2) is fitted with up to
``max_iter`` boosting rounds; each fit's number of rounds is chosen by the task's metric on the
validation split (early stopping on validation, read from the staged predictions), and the grid
point with the best validation metric wins. It is refitted on ``seeds`` seeds (the seed sets the
trees' feature subsampling) and evaluated on test; mean and std go into the study
(``record.GBDT_KEY``), beside the single-task networks.
"""

from __future__ import annotations

import itertools
import statistics
from typing import Any, Sequence

import numpy as np

from ple_search.data.schema import Task

GRID = {"learning_rate": (0.05, 0.1), "max_leaf_nodes": (15, 63), "l2_regularization": (0.0, 1.0)}
MAX_ITER = 400
MAX_NATIVE_CATEGORIES = 255


def _features(split: Any, vocab_sizes: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    cat, num = split.cat.numpy()[:, : len(vocab_sizes)], split.num.numpy()  # list-valued columns' slots are left out
    x = np.concatenate([cat.astype(np.float64), num.astype(np.float64)], axis=1)
    native = np.array([v <= MAX_NATIVE_CATEGORIES for v in vocab_sizes] + [False] * num.shape[1], dtype=bool)
    return x, native


def _metric(task: Task, y: np.ndarray, scores: np.ndarray) -> float:
    """AUC (higher is better) or RMSE (lower is better), as the networks report them."""
    if task.kind.probability:
        from sklearn.metrics import roc_auc_score

        return float(roc_auc_score(y, scores))
    return float(np.sqrt(np.mean((scores - y) ** 2)))


def _better(task: Task, a: float, b: float) -> bool:
    return a > b if task.kind.probability else a < b


def _staged(model: Any, task: Task, x: np.ndarray):
    return model.staged_decision_function(x) if task.kind.probability else model.staged_predict(x)


def _fit(task: Task, params: dict[str, Any], x: np.ndarray, y: np.ndarray, native: np.ndarray, seed: int, max_iter: int) -> Any:
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

    cls = HistGradientBoostingClassifier if task.kind.probability else HistGradientBoostingRegressor
    model = cls(
        max_iter=max_iter, early_stopping=False, categorical_features=native, random_state=seed,
        max_features=0.8, **params,
    )  # fmt: skip
    return model.fit(x, y)


def _best_round(model: Any, task: Task, x: np.ndarray, y: np.ndarray) -> tuple[int, float]:
    """Boosting rounds (1-based) with the best validation metric, and that metric."""
    best_round, best = 0, None
    for i, scores in enumerate(_staged(model, task, x)):
        value = _metric(task, y, np.asarray(scores).ravel())
        if best is None or _better(task, value, best):
            best_round, best = i + 1, value
    return best_round, float(best)


def _labelled(split: Any, k: int, vocab_sizes: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x, native = _features(split, vocab_sizes)
    y = split.labels[:, k].numpy().astype(np.float64)
    known = ~np.isnan(y)
    return x[known], y[known], native


def fit_gbdt(dataset: Any, tasks: Sequence[str], seeds: int = 3, *, grid: dict[str, Sequence[Any]] | None = None, max_iter: int = MAX_ITER) -> dict[str, Any]:
    """Per task: the grid point and rounds chosen on validation, and test mean/std over seeds.

    Args:
        dataset: a ``data.Dataset`` (the study's features and splits).
        tasks: the task names to fit (the study's task objectives).
        seeds: refits of the chosen config, for the test mean and std.
        grid: values per ``HistGradientBoosting*`` parameter (default ``GRID``).
        max_iter: boosting rounds fitted before the validation split picks how many to keep.
    """
    grid = grid or GRID
    schema = dataset.schema
    results: dict[str, Any] = {}
    for name in tasks:
        k = schema.task_names.index(name)
        task = schema.tasks[k]
        x_train, y_train, native = _labelled(dataset.train, k, schema.vocab_sizes)
        x_val, y_val, _ = _labelled(dataset.val, k, schema.vocab_sizes)
        x_test, y_test, _ = _labelled(dataset.test, k, schema.vocab_sizes)
        chosen, chosen_val, chosen_rounds = None, None, 0
        for values in itertools.product(*grid.values()):
            params = dict(zip(grid, values))
            model = _fit(task, params, x_train, y_train, native, 0, max_iter)
            rounds, value = _best_round(model, task, x_val, y_val)
            if chosen_val is None or _better(task, value, chosen_val):
                chosen, chosen_val, chosen_rounds = params, value, rounds
        vals, tests = [], []
        for seed in range(seeds):
            model = _fit(task, chosen, x_train, y_train, native, seed, chosen_rounds)
            score = model.decision_function if task.kind.probability else model.predict
            vals.append(_metric(task, y_val, score(x_val)))
            tests.append(_metric(task, y_test, score(x_test)))
        results[name] = {
            "model": f"HistGradientBoosting{'Classifier' if task.kind.probability else 'Regressor'}",
            "params": {**chosen, "max_iter": chosen_rounds}, "seeds": seeds,
            "val_mean": statistics.fmean(vals), "val_std": statistics.pstdev(vals) if seeds > 1 else 0.0,
            "test_mean": statistics.fmean(tests), "test_std": statistics.pstdev(tests) if seeds > 1 else 0.0,
        }  # fmt: skip
    return results
