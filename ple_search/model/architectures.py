"""The architectures a search can choose, one registry entry each (hyperparameter ``architecture``).

Torch-free: an entry names the hyperparameters its network reads, checks how they combine, says
how a report describes a config in one cell and what its smallest valid config is, and names the
``MultiTaskModel`` subclass that builds it (imported only when a model is built). A new
architecture is its network module (a ``model.base.MultiTaskModel``) plus one entry here and its
test; the training module, weighting, cost, serving and reports need no change.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from ple_search.core.errors import ConfigError
from ple_search.model.checks import check_int

if TYPE_CHECKING:
    from ple_search.model.base import MultiTaskModel
    from ple_search.model.hparams import PLEConfig


def _widths(w: Any) -> str:
    return "[" + ",".join(str(x) for x in w) + "]"


@dataclass(frozen=True)
class Architecture:
    """One architecture. ``network``: ``"module:Class"`` of its ``MultiTaskModel``;
    ``keys``: the ``PLEConfig`` keys the network takes; ``check(config)``: raises a
    ``ConfigError`` for combinations that build no model; ``family(hp, num_tasks)``: the name a
    report gives a config (e.g. CGC, MMoE for special cases of PLE); ``shape(hp, num_tasks)``:
    the rest of its report cell; ``valid(values, defaults)``: a space corner made buildable."""

    name: str
    network: str
    keys: tuple[str, ...]
    check: Callable[["PLEConfig"], None]
    family: Callable[[Mapping[str, Any], int], str]
    shape: Callable[[Mapping[str, Any], int], str]
    valid: Callable[[dict[str, Any], Mapping[str, Any]], dict[str, Any]] = lambda values, defaults: values

    def model_class(self) -> type["MultiTaskModel"]:
        module, _, cls = self.network.partition(":")
        return getattr(importlib.import_module(module), cls)

    def describe(self, hp: Mapping[str, Any], num_tasks: int) -> str:
        return f"{self.family(hp, num_tasks)} {self.shape(hp, num_tasks)}"


# --- PLE (Tang et al., RecSys 2020) and its special cases: CGC, MMoE, shared-bottom, single-task ---


def _ple_check(config: "PLEConfig") -> None:
    from ple_search.model.checks import _invalid

    check_int("levels", config.levels, 1)
    if config.expert_type not in ("mlp", "cross"):
        raise _invalid("expert_type", config.expert_type, "must be one of ['cross', 'mlp']")
    check_int("cross_layers", config.cross_layers, 1)
    check_int("cross_rank", config.cross_rank, 0)
    check_int("experts_per_task", config.experts_per_task, 0)
    check_int("shared_experts", config.shared_experts, 0)
    if config.experts_per_task + config.shared_experts == 0:
        raise ConfigError(
            "hyperparameters 'experts_per_task' = 0 and 'shared_experts' = 0 are invalid: at least one of them must be >= 1"
        )


def _ple_family(hp: Mapping[str, Any], num_tasks: int) -> str:
    p, s, levels = hp["experts_per_task"], hp["shared_experts"], hp["levels"]
    if num_tasks == 1:
        return "Single"
    if p == 0 and s == 1:
        return "SharedBottom"
    if p == 0:
        return "MMoE"
    return "CGC" if levels == 1 else "PLE"


SHARING_CELLS = {"shared": "", "task_specific": "emb:task ", "shared_and_specific": "emb:stem "}


def _expert_cell(hp: Mapping[str, Any]) -> str:
    """Expert type, gate and embedding sharing where not the defaults, e.g. ``cross2r8 dselect2 emb:stem ``."""
    cell = ""
    if hp.get("expert_type", "mlp") == "cross":
        cell += f"cross{hp['cross_layers']}{'r' + str(hp['cross_rank']) if hp['cross_rank'] else ''} "
    if hp.get("gate_type", "softmax") == "dselect_k":
        cell += f"dselect{hp['gate_k']} "
    return cell + SHARING_CELLS[hp.get("embedding_sharing", "shared")]


def _ple_shape(hp: Mapping[str, Any], num_tasks: int) -> str:
    return f"L{hp['levels']} {hp['experts_per_task']}x{num_tasks}+{hp['shared_experts']} {_expert_cell(hp)}{_widths(hp['expert_hidden'])} t{_widths(hp['tower_hidden'])}"


def _ple_valid(values: dict[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    if values.get("experts_per_task", defaults["experts_per_task"]) + values.get("shared_experts", defaults["shared_experts"]) == 0:
        values = {**values, "shared_experts": 1}
    return values


EXPERT_KEYS = (
    "levels", "experts_per_task", "shared_experts", "expert_type", "cross_layers", "cross_rank", "expert_hidden", "gate_type", "gate_k",
    "gate_hidden", "embedding_sharing", "tower_hidden", "dropout", "activation",
)  # fmt: skip

PLE = Architecture(
    name="ple",
    network="ple_search.model.ple:PLE",
    keys=EXPERT_KEYS,
    check=_ple_check,
    family=_ple_family,
    shape=_ple_shape,
    valid=_ple_valid,
)

# --- Cross-stitch networks (Misra et al., CVPR 2016): a column per task, mixed after every layer ---


def _no_check(config: "PLEConfig") -> None:
    """Widths, dropout and activation are checked for every architecture by ``PLEConfig``."""


CROSS_STITCH = Architecture(
    name="cross_stitch",
    network="ple_search.model.cross_stitch:CrossStitch",
    keys=("expert_hidden", "tower_hidden", "dropout", "activation"),
    check=_no_check,
    family=lambda hp, num_tasks: "Single" if num_tasks == 1 else "CrossStitch",
    shape=lambda hp, num_tasks: f"{num_tasks}x{_widths(hp['expert_hidden'])} t{_widths(hp['tower_hidden'])}",
)

# --- AdaTT (Li et al., KDD 2023): task-specific and shared experts, every task fusing all of them ---


ADATT = Architecture(
    name="adatt",
    network="ple_search.model.adatt:AdaTT",
    keys=EXPERT_KEYS,
    check=_ple_check,
    family=lambda hp, num_tasks: "Single" if num_tasks == 1 else "AdaTT",
    shape=_ple_shape,
    valid=_ple_valid,
)

ARCHITECTURES: dict[str, Architecture] = {a.name: a for a in (PLE, CROSS_STITCH, ADATT)}


def architecture_of(hp: Mapping[str, Any]) -> Architecture:
    """The registry entry a hyperparameter dict names (``ple`` for configs stored before the key)."""
    return ARCHITECTURES[hp.get("architecture", "ple")]


def describe(hp: Mapping[str, Any], num_tasks: int, cascade: bool = False) -> str:
    """One readable report cell, e.g. ``PLE L2 3x2+2 [16] t[8] uncertainty``: the architecture's
    own description, then a numeric encoding other than ``standard``, then the task balancing;
    with dependent tasks (``cascade``) the task relation last (``esmm``, ``aitm``, ``independent``)."""
    encoding = hp.get("numeric_encoding", "standard")
    encoding = "" if encoding == "standard" else f"{encoding} "
    relation = f" {hp.get('task_relation', 'esmm')}" if cascade else ""
    return f"{architecture_of(hp).describe(hp, num_tasks)} {encoding}{hp['loss_weighting']}{relation}"


def embedding_groups(config: "PLEConfig", num_tasks: int) -> int:
    """How many sets of embedding tables the config's network reads: one, or (an architecture
    that takes ``embedding_sharing``, set to other than ``shared``) one per task plus the shared set."""
    takes = "embedding_sharing" in ARCHITECTURES[config.architecture].keys
    return num_tasks + 1 if takes and config.embedding_sharing != "shared" else 1


def build(config: "PLEConfig", input_dim: int, num_tasks: int, cascade: Sequence[tuple[int, int]] = ()) -> "MultiTaskModel":
    """The network of a validated config; ``cascade``: the (child, parent) task links its towers
    pass information along (``task_relation: aitm``)."""
    return ARCHITECTURES[config.architecture].model_class()(input_dim, num_tasks, config=config, cascade=cascade)
