"""What the gates do: each task's mean gate weight on each expert per level (the PLE paper's
expert utilisation), written by `train` and shown by `ple-search explain`."""

import json

import pytest
import torch

from ple_search.cli.main import main
from ple_search.model.ple import PLE


def test_gate_usage_is_the_mean_of_each_gates_softmax_over_the_rows():
    torch.manual_seed(0)
    model = PLE(5, 2, levels=2, experts_per_task=2, shared_experts=3, expert_hidden=[6])
    x = torch.randn(40, 5)
    usage = model.gate_usage(x)
    level = model.levels[0]
    logits, shared_logits = level._gate_logits(None, x)
    expected = torch.softmax(logits, -1).mean(1)  # [T, P+S]: task k's gate over its 2 experts and the 3 shared
    torch.testing.assert_close(usage[0]["task"], expected)
    torch.testing.assert_close(usage[0]["shared"], torch.softmax(shared_logits, -1).mean(0))  # over all 7 experts
    assert usage[1]["shared"] is None  # the last level has no shared gate
    for level in usage:
        torch.testing.assert_close(level["task"].sum(-1), torch.ones(2))  # every gate's weights sum to 1


def test_a_single_expert_per_task_is_taken_whole():
    model = PLE(5, 2, levels=1, experts_per_task=1, shared_experts=0)
    assert model.gate_usage(torch.randn(3, 5)) == [{"task": None, "shared": None}]


@pytest.mark.slow
def test_train_writes_the_gates_and_explain_shows_them(tmp_path, capsys):
    import yaml

    from helpers import user_table

    spec = user_table(tmp_path)
    space = {"dataset": {"name": str(spec)}, "sampler": {"name": "random", "seed": 0}, "budget": {"max_epochs": 2, "patience": 2},
             "fixed": {"batch_size": 64, "levels": 2, "experts_per_task": 1, "shared_experts": 2}}  # fmt: skip
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    storage = str(tmp_path / "s.journal")
    assert main(["run", "--study", "g", "--space", str(tmp_path / "space.yaml"), "--trials", "1", "--storage", storage, "--quiet", "--threads", "1"]) == 0
    assert main(["export", "--study", "g", "--storage", storage, "--trial", "0", "--out", str(tmp_path / "best.yaml")]) == 0
    assert main(["train", "--config", str(tmp_path / "best.yaml"), "--seeds", "1", "--out", str(tmp_path / "model")]) == 0
    report = json.loads((tmp_path / "model" / "gates.json").read_text())
    assert (tmp_path / "model" / "gates.png").stat().st_size > 0
    assert report["split"] == "test" and [level["level"] for level in report["levels"]] == [1, 2]
    click = report["levels"][0]["tasks"]["click"]
    assert list(click["experts"]) == ["click/0", "shared/0", "shared/1"]
    assert sum(click["experts"].values()) == pytest.approx(1.0) and click["shared_share"] == pytest.approx(click["experts"]["shared/0"] + click["experts"]["shared/1"])
    assert list(report["levels"][0]["shared_gate"]) == ["click/0", "buy/0", "shared/0", "shared/1"]
    capsys.readouterr()
    assert main(["explain", "--model", str(tmp_path / "model")]) == 0
    shown = capsys.readouterr()
    assert "click/0" in shown.out and "shared share" in shown.out and "level 1: shared experts take click " in shown.err
    (tmp_path / "model" / "gates.json").write_text('{"levels": [')
    assert main(["explain", "--model", str(tmp_path / "model")]) == 2
    err = capsys.readouterr().err
    assert "gates.json: damaged" in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_pareto_shows_what_the_gates_of_a_confirmed_front_trial_do(tmp_path, capsys):
    import yaml

    from helpers import user_table

    spec = user_table(tmp_path)
    space = {"dataset": {"name": str(spec)}, "sampler": {"name": "random", "seed": 0}, "budget": {"max_epochs": 1, "patience": 1},
             "fixed": {"batch_size": 64, "architecture": "adatt", "levels": 1, "experts_per_task": 1, "shared_experts": 1}}  # fmt: skip
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    storage = str(tmp_path / "s.journal")
    assert main(["run", "--study", "g", "--space", str(tmp_path / "space.yaml"), "--trials", "1", "--storage", storage, "--quiet", "--threads", "1"]) == 0
    capsys.readouterr()
    assert main(["pareto", "--study", "g", "--storage", storage, "--gates", "0"]) == 2
    err = capsys.readouterr().err
    assert "--gates 0: trial 0 of study 'g' is not confirmed; `ple-search confirm --study g --trial 0`" in err and len(err.strip().splitlines()) == 1
    assert main(["export", "--study", "g", "--storage", storage, "--pick", "knee", "--confirmed", "--out", str(tmp_path / "b.yaml")]) == 2
    assert "--confirmed: study 'g' has no confirmed trials; run `ple-search confirm --study g` first" in capsys.readouterr().err
    assert main(["confirm", "--study", "g", "--storage", storage, "--trial", "0", "--seeds", "1", "--threads", "1"]) == 0
    capsys.readouterr()
    assert main(["export", "--study", "g", "--storage", storage, "--pick", "knee", "--confirmed", "--out", str(tmp_path / "b.yaml")]) == 0
    assert "chose trial 0: knee" in capsys.readouterr().err and (tmp_path / "b.yaml").is_file()
    assert main(["pareto", "--study", "g", "--storage", storage, "--gates", "0", "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    level = report["levels"][0]  # AdaTT: every task's unit fuses every expert
    assert list(level["tasks"]["click"]["experts"]) == ["click/0", "buy/0", "shared/0"] and report["split"] == "test"
    assert sum(level["tasks"]["buy"]["experts"].values()) == pytest.approx(1.0)
    assert main(["pareto", "--study", "g", "--storage", storage, "--gates", "0"]) == 0
    assert "buy/0" in capsys.readouterr().out
