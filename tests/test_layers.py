"""The layers hold: folders are layers, no module imports a higher layer, the torch-free layers
import no torch, and the processes that only read or coordinate studies never load torch or
Lightning (checked on the real commands, on studies with finished trials)."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helpers import tiny_space

PACKAGE = Path(__file__).resolve().parent.parent / "ple_search"
# Lowest first: a module may import its own layer and the layers before it, never one after it.
LAYERS = ("core", "data", "model", "train", "serve", "study", "evaluate", "cli")
# Modules that must import no torch or Lightning when imported (their layer's reading half).
TORCH_FREE = (
    "ple_search.core.errors", "ple_search.core.files", "ple_search.data", "ple_search.data.schema",
    "ple_search.model.hparams", "ple_search.model.architectures", "ple_search.serve.settings", "ple_search.serve.cost",
    "ple_search.study.space", "ple_search.study.record", "ple_search.study.pruning", "ple_search.study.pareto",
    "ple_search.study.storage", "ple_search.study.search", "ple_search.study.trial", "ple_search.study.run",
    "ple_search.study.parallel", "ple_search.study.tracking", "ple_search.evaluate.report", "ple_search.evaluate.export",
    "ple_search.evaluate.transfer", "ple_search.cli.main", "ple_search.cli.progress", "ple_search.study.starter",
    "ple_search.data.profile", "ple_search.serve.gates",
)  # fmt: skip
ENGINE = ("torch", "pytorch_lightning", "lightning")


def _layer(module: str) -> int | None:
    parts = module.split(".")
    if parts[0] != "ple_search":
        return None
    if len(parts) == 1 or parts[1] in ("_version",):
        return 0  # the version and the lazy facade sit beside core
    return LAYERS.index(parts[1]) if parts[1] in LAYERS else None


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every ``ple_search`` module a file imports, anywhere in it (lazy imports count too)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return found


def _type_only(tree: ast.AST) -> set[int]:
    """Line numbers of imports under ``if TYPE_CHECKING:`` (never run)."""
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            lines |= {n.lineno for stmt in node.body for n in ast.walk(stmt) if isinstance(n, (ast.Import, ast.ImportFrom))}
    return lines


def _module_graph() -> dict[str, set[str]]:
    """Each module's imports of other ``ple_search`` modules that run (type-only ones aside)."""
    paths = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in paths.items():
        skip = _type_only(ast.parse(path.read_text()))
        targets = set()
        for line, imported in _imports(path):
            if line in skip:
                continue
            found = max((m for m in paths if imported == m or imported.startswith(m + ".")), key=len, default=None)
            if found and found != name and not name.startswith(found + "."):  # a package's own __init__ is always there
                targets.add(found)
        graph[name] = targets
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def _target_layer(imported: str) -> int | None:
    # "ple_search.model.hparams.DEFAULTS" and "ple_search.model.ple" both belong to ``model``
    return _layer(imported)


def test_every_module_lives_in_a_layer_folder():
    loose = [p.name for p in PACKAGE.glob("*.py") if p.name not in ("__init__.py", "_version.py")]
    assert loose == [], f"modules outside a layer folder: {loose}"
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert folders == {*LAYERS, "search_spaces"}


def test_no_module_imports_a_higher_layer():
    violations = []
    for path in sorted(PACKAGE.rglob("*.py")):
        own = _layer(_module_name(path))
        if own is None:
            continue
        for line, imported in _imports(path):
            target = _target_layer(imported)
            if target is not None and target > own:
                violations.append(f"{path.relative_to(PACKAGE.parent)}:{line} ({LAYERS[own]}) imports {imported} ({LAYERS[target]})")
    assert violations == []


def test_no_modules_import_each_other_in_a_circle():
    assert _cycles(_module_graph()) == []


def test_the_circle_check_finds_a_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_contract_check_catches_an_upward_import(tmp_path):
    """The check above is not vacuous: a data module importing the study layer is found."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from ple_search.study.record import COST\n")
    assert [_target_layer(name) for _, name in _imports(bad)] == [LAYERS.index("study")]
    assert _layer("ple_search.data.bad") < LAYERS.index("study")


def test_the_torch_free_modules_import_no_torch_or_lightning():
    probe = (
        "import importlib, json, sys\n"
        f"for name in {list(TORCH_FREE)!r}:\n"
        "    importlib.import_module(name)\n"
        f"print(json.dumps(sorted(m for m in {list(ENGINE)!r} if m in sys.modules)))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []


def _cli_loading(args, cwd):
    """Run the CLI in a fresh interpreter; its exit code, stderr, and the engine modules it loaded."""
    probe = (
        "import json, sys\n"
        "from ple_search.cli.main import main\n"
        f"code = main({list(map(str, args))!r})\n"
        f"print(\"\\n\" + json.dumps([code, sorted(m for m in {list(ENGINE)!r} if m in sys.modules)]), file=sys.__stdout__)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=600, cwd=cwd)
    assert result.returncode == 0, result.stderr
    code, loaded = json.loads(result.stdout.strip().splitlines()[-1])
    return code, result.stderr, loaded


@pytest.fixture(scope="module")
def finished_study(tmp_path_factory):
    """A study with finished trials and a serving-cost objective under serving limits."""
    from ple_search.cli.main import main

    folder = tmp_path_factory.mktemp("study")
    space = folder / "space.yaml"
    space.write_text(yaml.safe_dump(tiny_space(objectives=["y1", "y2", {"cost": "params"}], limits={"params": 100000})))
    storage = str(folder / "s.journal")
    assert main(["run", "--study", "s", "--space", str(space), "--trials", "2", "--storage", storage, "--quiet", "--threads", "1"]) == 0
    return folder, space, storage


@pytest.mark.slow
@pytest.mark.parametrize("command", [
    ["pareto", "--study", "s", "--format", "json", "--all"],
    ["pareto", "--study", "s", "--plot", "front.png", "--x", "params", "--y", "y1"],
    ["export", "--study", "s", "--pick", "knee", "--max-params", "100000", "--out", "best.yaml"],
    ["studies"],
])  # fmt: skip
def test_commands_that_read_studies_load_neither_torch_nor_lightning(finished_study, command):
    folder, _, storage = finished_study
    code, stderr, loaded = _cli_loading([*command, "--storage", storage], folder)
    assert code == 0, stderr
    assert loaded == []


@pytest.mark.slow
def test_a_jobs_parent_with_a_cost_objective_and_limits_loads_neither_torch_nor_lightning(finished_study):
    folder, space, storage = finished_study
    code, stderr, loaded = _cli_loading(["run", "--study", "s", "--space", space, "--trials", "4", "--storage", storage, "--jobs", "2"], folder)
    assert code == 0, stderr
    assert "4/4 trials finished by 2 workers" in stderr
    assert f"Show the front: ple-search pareto --study s --storage '{storage}'" in stderr  # the hint names the storage
    assert loaded == []


@pytest.mark.slow
def test_a_default_run_prints_only_its_own_display(tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(tiny_space()))
    run = subprocess.run(
        [sys.executable, "-m", "ple_search.cli.main", "run", "--study", "quiet", "--space", str(space), "--trials", "2"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    for banner in ("GPU available", "TPU available", "Tip:", "litlogger", "Trainer.fit", "LOCAL_RANK", "Warning"):
        assert banner not in run.stderr, run.stderr
    assert "2/2 trials finished" in run.stderr


# --- the seams ---


def test_ple_is_one_entry_of_the_architecture_registry_and_builds_through_it():
    import torch

    from ple_search.model.architectures import ARCHITECTURES, build
    from ple_search.model.base import MultiTaskModel
    from ple_search.model.hparams import PLEConfig
    from ple_search.model.ple import PLE

    assert list(ARCHITECTURES) == ["ple", "cross_stitch", "adatt"] and ARCHITECTURES["ple"].model_class() is PLE
    config = PLEConfig.from_dict({"levels": 1, "expert_hidden": [8]})
    model = build(config, 6, 2)
    assert isinstance(model, MultiTaskModel) and model(torch.randn(4, 6)).shape == (4, 2)
    shared = {id(p) for p in model.shared_parameters()}
    assert shared and not shared & {id(p) for p in model.towers.parameters()}  # towers are each task's own


def test_an_unknown_architecture_is_one_line_naming_the_key():
    from ple_search.core.errors import ConfigError
    from ple_search.model.hparams import PLEConfig

    with pytest.raises(ConfigError, match="hyperparameter 'architecture' = 'dcn' is invalid: must be one of \\['adatt', 'cross_stitch', 'ple'\\]"):
        PLEConfig.from_dict({"architecture": "dcn"})


def test_the_weighting_names_of_the_hyperparameters_are_the_registered_schemes():
    from ple_search.model.hparams import LOSS_WEIGHTINGS, WEIGHTING_KEYS
    from ple_search.train.weighting import SCHEMES

    assert {name: cls.keys for name, cls in SCHEMES.items()} == LOSS_WEIGHTINGS
    assert set(WEIGHTING_KEYS) == {"loss_weighting", *(k for cls in SCHEMES.values() for k in cls.keys)}


def test_task_metrics_and_directions_come_from_the_task_type_registry():
    from ple_search.data.schema import TASK_TYPES, Task, signed

    for name, kind in TASK_TYPES.items():
        task = Task("t", name)
        assert (task.metric, task.direction, task.kind) == (kind.metric, kind.direction, kind)
    assert signed(0.9, "maximize") == 0.9 and signed(2.0, "minimize") == -2.0


def test_the_output_head_is_the_same_for_training_and_serving():
    import torch

    from ple_search.serve.engines import ServingModel
    from ple_search.train.module import PLEModule
    from helpers import make_dataset

    dataset = make_dataset(types=("binary", "regression"))
    module = PLEModule(dataset.schema, {"levels": 1}).eval()
    cat, num = dataset.test.cat[:5].long(), dataset.test.num[:5]
    with torch.no_grad():
        assert torch.equal(ServingModel(module)(cat, num), module.predict_outputs(cat, num))
        raw = module.model(module.encoder(cat, num))
        scale, shift = dataset.schema.tasks[1].scale, dataset.schema.tasks[1].shift
        expected = torch.stack([torch.sigmoid(raw[:, 0]), raw[:, 1] * scale + shift], 1)
        assert torch.allclose(module.predict_outputs(cat, num), expected, atol=1e-6)


def test_a_workers_request_is_the_parents_with_one_job_its_threads_and_quiet():
    from ple_search.study.run import RunRequest

    parent = RunRequest("s", 10, jobs=4, threads=None, quiet=False, seed=3)
    worker = parent.for_worker(2, threads=1)
    assert (worker.jobs, worker.threads, worker.quiet, worker.worker, worker.seed, worker.trials) == (1, 1, True, 2, 3, 10)


def test_without_jobs_or_threads_workers_are_tried_only_where_there_are_trials_to_share():
    from ple_search.study.run import RunRequest, auto_jobs

    auto = RunRequest("s", 20, auto_jobs=True)
    assert auto_jobs(auto, finished=0, cores=2) == 2
    assert auto_jobs(auto, finished=14, cores=2) == 1  # 6 left: not worth starting workers
    assert auto_jobs(RunRequest("s", 20, auto_jobs=False), finished=0, cores=2) == 1  # --jobs or --threads given
    assert auto_jobs(RunRequest("s", 20, auto_jobs=True, accelerator="gpu"), finished=0, cores=2) == 1
    assert auto_jobs(auto, finished=0, cores=1) == 1


@pytest.mark.slow
@pytest.mark.skipif(__import__("os").cpu_count() < 2, reason="one core: one job")
def test_a_default_run_with_many_small_trials_runs_one_worker_per_core(tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(tiny_space()))
    run = subprocess.run(
        [sys.executable, "-m", "ple_search.cli.main", "run", "--study", "auto", "--space", str(space), "--trials", "8", "--quiet"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    cores = __import__("os").cpu_count()
    assert f"threads: 1 per trial x {cores} jobs (8 trials to share: one trial per core; --threads N overrides)" in run.stderr
    assert f"8/8 trials finished by {cores} workers" in run.stderr
    assert "[I " not in run.stderr and "Trial 0 finished" not in run.stderr  # no library log lines from the workers
