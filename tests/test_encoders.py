"""Numeric feature encodings (Gorishniy et al., 2022): bin edges fitted on the training split
only, the piecewise-linear encoding's definition, and every encoding serving exactly as trained."""

import numpy as np
import pytest
import torch

from helpers import make_dataset
from ple_search.data.dataset import Dataset, Split
from ple_search.core.errors import ConfigError
from ple_search.train.module import PLEModule
from ple_search.train.engine import TrialSettings, train_config
from ple_search.serve.engines import engine, onnx_available

ENCODINGS = ["standard", "quantile", "piecewise", "periodic"]


def test_bin_edges_are_the_training_splits_quantiles_and_ignore_validation_and_test():
    dataset = make_dataset(n=400)
    expected = np.quantile(dataset.train.num.numpy().astype(np.float64), np.linspace(0, 1, 65), axis=0).astype(np.float32).T
    np.testing.assert_array_equal(np.array(dataset.schema.numeric_quantiles, dtype=np.float32), expected)
    shifted = Dataset(dataset.schema, dataset.train, Split(dataset.val.cat, dataset.val.num + 100, dataset.val.labels),
                      Split(dataset.test.cat, dataset.test.num - 100, dataset.test.labels), dataset.preprocessor)  # fmt: skip
    assert shifted.schema.numeric_quantiles == dataset.schema.numeric_quantiles


def test_the_piecewise_encoding_is_one_below_the_values_bin_its_position_inside_and_zero_above():
    dataset = make_dataset(n=400)
    module = PLEModule(dataset.schema, {"numeric_encoding": "piecewise", "numeric_bins": 8})
    encoder = module.encoder.numeric
    edges = np.array(dataset.schema.numeric_quantiles[0][::8])
    x = torch.tensor([[(edges[2] + edges[3]) / 2, 0.0, 0.0]], dtype=torch.float32)  # the middle of bin 3 of feature 0
    encoded = encoder.piecewise(x)[0, 0].detach().numpy()
    np.testing.assert_allclose(encoded, [1, 1, 0.5, 0, 0, 0, 0, 0], atol=1e-5)


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_every_encoding_trains_and_its_serving_graphs_equal_the_eager_model(encoding):
    dataset = make_dataset(n=400)
    settings = TrialSettings(list(dataset.schema.tasks), max_epochs=2, patience=2)
    module, recorder, _ = train_config({"numeric_encoding": encoding, "numeric_bins": 8, "lr": 0.01, "batch_size": 64}, dataset, settings, seed=0)
    assert all(np.isfinite(v) for v in recorder.curve[-1].values())
    cat, num = dataset.test.cat.numpy(), dataset.test.num.numpy()
    eager = engine("eager", module)(cat, num)
    names = ["torchscript", "onnx"] if onnx_available() else ["torchscript"]
    for name in names:
        np.testing.assert_allclose(engine(name, module)(cat, num), eager, atol=1e-5, rtol=0)


@pytest.mark.parametrize("hparams, key", [({"numeric_encoding": "spline"}, "numeric_encoding"), ({"numeric_bins": 10}, "numeric_bins"),
                                          ({"periodic_sigma": 0}, "periodic_sigma")])  # fmt: skip
def test_bad_encoding_settings_name_the_key(hparams, key):
    with pytest.raises(ConfigError, match=key):
        PLEModule(make_dataset(n=100).schema, hparams)
