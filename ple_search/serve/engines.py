"""The serving graph and the engines that run it: eager PyTorch, TorchScript (``model.pt``) and
ONNX (``model.onnx``, through ONNX Runtime). ``predict`` and the latency cost measure run the same
graph, so a latency measured during the search is the latency of what ships.

ONNX needs the optional extra: ``pip install 'ple-search[serve]'`` (onnx, onnxruntime).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor, nn

from ple_search.core.errors import ConfigError
from ple_search.serve.settings import ENGINES
from ple_search.train.module import PLEModule

Engine = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (codes [B, C] int64, numeric [B, F] float32) -> [B, T]


class ServingModel(nn.Module):
    """What serving runs: categorical codes and numeric features in, probabilities (binary tasks)
    or values in the label's units (regression tasks) out."""

    def __init__(self, module: PLEModule) -> None:
        super().__init__()
        self.encoder, self.model, self.head = module.encoder, module.model, module.head

    def forward(self, cat: Tensor, num: Tensor) -> Tensor:
        return self.head.serve(self.head(self.model(self.encoder(cat, num))))


def example_inputs(module: PLEModule, batch_size: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Valid random inputs: codes within each feature's vocabulary, standard-normal numerics."""
    generator = torch.Generator().manual_seed(seed)
    sizes = module.schema.vocab_sizes
    slots = [v for v in sizes] + [f.vocab_size for f in module.schema.lists for _ in range(f.max_len)]  # list slots: 0 = empty
    cat = torch.stack([torch.randint(0, v, (batch_size,), generator=generator) for v in slots], 1) if slots else torch.zeros(batch_size, 0, dtype=torch.long)
    num = torch.randn(batch_size, len(module.schema.numeric), generator=generator)
    return cat, num


def torchscript(module: PLEModule, example: tuple[Tensor, Tensor]) -> torch.jit.ScriptModule:
    """A traced ``ServingModel`` (TorchScript is what serving stacks load; torch marks it deprecated
    in favour of ``torch.export``, which the serving side does not read yet)."""
    module.eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.trace(ServingModel(module).eval(), example, check_trace=False)


def onnx_available() -> bool:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def export_onnx(module: PLEModule, path: Path, example: tuple[Tensor, Tensor]) -> None:
    """``ServingModel`` as ONNX (opset 17, dynamic batch), inputs ``cat`` and ``num``, output
    ``outputs``. Uses torch's TorchScript-based exporter: the graph has no control flow, and that
    exporter needs no onnxscript."""
    if not onnx_available():
        raise ConfigError("ONNX export needs the serve extra: pip install 'ple-search[serve]'")
    module.eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            ServingModel(module).eval(), example, str(path), input_names=["cat", "num"], output_names=["outputs"],
            dynamic_axes={"cat": {0: "batch"}, "num": {0: "batch"}, "outputs": {0: "batch"}}, opset_version=17, dynamo=False,
        )  # fmt: skip


def _typed(run: Engine) -> Engine:
    """Any integer codes (the training arrays are int32) and float numerics, as the graphs take them."""

    def typed(cat: np.ndarray, num: np.ndarray) -> np.ndarray:
        return run(np.ascontiguousarray(cat, dtype=np.int64), np.ascontiguousarray(num, dtype=np.float32))

    return typed


def engine(name: str, module: PLEModule, *, scripted: torch.jit.ScriptModule | None = None, onnx_path: Path | None = None, threads: int | None = None) -> Engine:
    """A callable running the serving graph with ``name``: ``torchscript`` (``scripted``, else a
    fresh trace), ``onnx`` (``onnx_path``, else a fresh export to a temporary file) or ``eager``."""
    if name not in ENGINES:
        raise ConfigError(f"engine {name!r} is not one of {list(ENGINES)}")
    module.eval()
    if name == "eager":
        serving = ServingModel(module).eval()

        def run_eager(cat: np.ndarray, num: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                return serving(torch.from_numpy(cat), torch.from_numpy(num)).numpy()

        return _typed(run_eager)
    if name == "torchscript":
        graph = scripted if scripted is not None else torchscript(module, example_inputs(module, 2))

        def run_script(cat: np.ndarray, num: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                return graph(torch.from_numpy(cat), torch.from_numpy(num)).numpy()

        return _typed(run_script)
    if not onnx_available():
        raise ConfigError("the onnx engine needs the serve extra: pip install 'ple-search[serve]'")
    import onnxruntime

    options = onnxruntime.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if onnx_path is not None:
        session = onnxruntime.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    else:  # a fresh export, read into the session and removed: nothing is left in the temp folder
        import shutil
        import tempfile

        folder = Path(tempfile.mkdtemp(prefix="ple-search-onnx-"))
        try:
            export_onnx(module, folder / "model.onnx", example_inputs(module, 2))
            session = onnxruntime.InferenceSession(str(folder / "model.onnx"), options, providers=["CPUExecutionProvider"])
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    inputs = {i.name for i in session.get_inputs()}  # the exporter drops an input the graph never reads (no categorical columns)

    def run_onnx(cat: np.ndarray, num: np.ndarray) -> np.ndarray:
        return session.run(None, {k: v for k, v in (("cat", cat), ("num", num)) if k in inputs})[0]

    return _typed(run_onnx)
