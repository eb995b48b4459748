"""Shared fixtures: an isolated cache and data dir per test, a fixed seed."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("PLE_SEARCH_CACHE", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.setenv("PLE_SEARCH_DATA", str(tmp_path_factory.mktemp("data")))
    torch.manual_seed(0)
