"""Scale benchmark (issue 15): a generated click-log table of 1M and 5M rows through the data path.

Per size, each measure in a fresh process (so peaks do not mix), the reference in the same run:
* first load: Arrow columnar path (now) against the pandas path (before; still the fallback and
  the reference of the equality tests), seconds and peak RSS, beside the final arrays' size;
* cached load: seconds to open the memory-mapped cache entry;
* one training epoch of a small PLE at batch 4,096: samples/s from the mapped cache against the
  same arrays copied into process memory;
* ``ple-search run --jobs 1`` and ``--jobs 2`` (two 1-epoch trials): peak summed PSS of the
  worker side (the workers and the fork server they are forked from, whose imported pages they
  share; PSS splits shared pages between the processes that map them, RSS would count the shared
  cache and imports once per process), of the parent, and of all processes; and peak summed RSS;
* larger than memory (``--ram-limit``, needs a writable cgroup v1 memory controller, i.e. root):
  the epoch again, in a memory cgroup whose limit is below the arrays' size, with the cache
  files dropped from the page cache first.

    python bench/scale.py [--rows 1000000 5000000] [--data bench-data] [--ram-limit 0.5] [--ram-limit-rows 1000000]
                          [--skip-pandas] [--jobs-only]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bigtable import write as write_table  # noqa: E402

GIB = 1024**3

LOAD = """
import json, resource, sys, time
from ple_search.data import table
from ple_search.data.table import read_spec
from ple_search.data import load
base = int(open("/proc/self/statm").read().split()[1]) * 4096
start = time.perf_counter()
if sys.argv[2] == "pandas":
    spec = read_spec(__import__("pathlib").Path(sys.argv[1]))
    d = table._build_pandas(spec, spec["file"], {})
else:
    d = load(sys.argv[1])
seconds = time.perf_counter() - start
size = sum(getattr(d.split(n), k).numpy().nbytes for n in ("train", "val", "test") for k in ("cat", "num", "labels"))
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"seconds": seconds, "peak": peak, "base": base, "size": size, "rows": len(d.train) + len(d.val) + len(d.test)}))
"""

EPOCH = """
import json, sys, time, torch
import pytorch_lightning as pl
from ple_search.data import load, PLEDataModule
from ple_search.data.dataset import Split
from ple_search.train.module import PLEModule
torch.set_num_threads(int(sys.argv[3]))
d = load(sys.argv[1])
if sys.argv[2] == "memory":
    d.train = Split(d.train.cat.clone(), d.train.num.clone(), d.train.labels.clone())
module = PLEModule(d.schema, {"levels": 1, "experts_per_task": 1, "shared_experts": 1, "expert_hidden": [32], "tower_hidden": [8], "batch_size": 4096})
trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0, accelerator="cpu")
start = time.perf_counter()
trainer.fit(module, PLEDataModule(d, 4096))
print(json.dumps({"samples_per_s": len(d.train) / (time.perf_counter() - start)}))
"""

SPACE = """
dataset: {{name: {spec}}}
budget: {{max_epochs: 1, patience: 1}}
fixed: {{levels: 1, experts_per_task: 1, shared_experts: 1, expert_hidden: [32], tower_hidden: [8], batch_size: 4096}}
params:
  lr: {{type: float, low: 1.0e-3, high: 1.0e-2, log: true}}
"""


def child(code: str, *args: str, env: dict | None = None, cgroup: Path | None = None, timeout: float = 1800) -> dict:
    command = [sys.executable, "-c", textwrap.dedent(code), *args]
    if cgroup is not None:  # join the cgroup before exec, so every page the child touches is charged to it
        command = ["sh", "-c", f'echo $$ > {cgroup}/cgroup.procs && exec "$@"', "sh", *command]
    try:
        out = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"still running after {timeout:.0f} s"}
    if out.returncode != 0:
        if out.returncode == -9:
            return {"error": "killed by SIGKILL (out of memory)", "returncode": -9}
        return {"error": f"exit {out.returncode}: " + (out.stderr.strip().splitlines() or [""])[-1], "returncode": out.returncode}
    return json.loads(out.stdout.strip().splitlines()[-1])


def _tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, stack = [], [root]
    while stack:
        pid = stack.pop()
        found.append(pid)
        stack.extend(children.get(pid, []))
    return found


def _memory(pid: int) -> tuple[int, int]:
    """(RSS, PSS) bytes of a process from smaps_rollup."""
    values = {}
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("Rss", "Pss"):
                values[key] = int(rest.split()[0]) * 1024
    except OSError:
        return 0, 0
    return values.get("Rss", 0), values.get("Pss", 0)


def run_jobs(spec: Path, jobs: int, env: dict) -> dict:
    """Peak summed PSS/RSS of the worker side (every process below the parent: the workers, the
    fork server, multiprocessing's resource tracker), of the parent and of all."""
    with tempfile.TemporaryDirectory() as tmp:
        space = Path(tmp) / "space.yaml"
        space.write_text(SPACE.format(spec=spec.resolve()))
        command = [sys.executable, "-m", "ple_search.cli.main", "run", "--study", "scale", "--space", str(space),
                   "--storage", str(Path(tmp) / "s.journal"), "--trials", str(jobs), "--jobs", str(jobs), "--quiet", "--threads", "1"]
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env={**os.environ, **env})
        peak = {"workers_pss": 0, "workers_rss": 0, "parent_pss": 0, "total_pss": 0}
        while process.poll() is None:
            pids = _tree(process.pid)
            workers = [p for p in pids if p != process.pid] if jobs > 1 else [process.pid]
            memory = {p: _memory(p) for p in pids}
            workers_pss = sum(memory[p][1] for p in workers)
            peak["workers_pss"] = max(peak["workers_pss"], workers_pss)
            peak["workers_rss"] = max(peak["workers_rss"], sum(memory[p][0] for p in workers))
            peak["parent_pss"] = max(peak["parent_pss"], memory[process.pid][1] if jobs > 1 else 0)
            peak["total_pss"] = max(peak["total_pss"], sum(m[1] for m in memory.values()))
            time.sleep(0.2)
        if process.returncode != 0:
            return {"error": process.stderr.read().strip().splitlines()[-1:]}
        return peak


def drop_page_cache(folder: Path) -> None:
    for path in folder.rglob("*.npy"):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def limited_epoch(spec: Path, env: dict, cache: Path, size: int, fraction: float, threads: int) -> dict:
    """The mapped epoch in a memory cgroup: once unlimited, to measure what it charges (its own
    memory plus the arrays it pages in), then limited to that less (1 - fraction) of the arrays, so
    they cannot all be resident; then the same with the arrays copied into process memory."""
    root = Path("/sys/fs/cgroup/memory")
    if not os.access(root, os.W_OK):
        return {"error": "no writable cgroup v1 memory controller (run as root)"}
    group = root / f"ple-scale-{os.getpid()}"
    group.mkdir()
    try:
        drop_page_cache(cache)
        result = {"unlimited": child(EPOCH, str(spec), "mapped", str(threads), env=env, cgroup=group)}
        result["unlimited_usage"] = int((group / "memory.max_usage_in_bytes").read_text())
        limit = int(result["unlimited_usage"] - (1 - fraction) * size)
        (group / "memory.limit_in_bytes").write_text(str(limit))
        if (group / "memory.memsw.limit_in_bytes").exists():
            (group / "memory.memsw.limit_in_bytes").write_text(str(limit))  # no swapping around it
        (group / "memory.max_usage_in_bytes").write_text("0")
        drop_page_cache(cache)
        result["limit"] = limit
        result["mapped"] = child(EPOCH, str(spec), "mapped", str(threads), env=env, cgroup=group)
        result["max_usage"] = int((group / "memory.max_usage_in_bytes").read_text())
        drop_page_cache(cache)
        result["memory"] = child(EPOCH, str(spec), "memory", str(threads), env=env, cgroup=group)
        return result
    finally:
        group.rmdir()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 5_000_000])
    parser.add_argument("--data", default="bench-data")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ram-limit", type=float, default=0.5, help="share of the train arrays that fits in the cgroup (0: skip)")
    parser.add_argument("--ram-limit-rows", type=int, default=1_000_000, help="largest table for the cgroup epoch (it runs from disk: slow)")
    parser.add_argument("--skip-pandas", action="store_true", help="skip the (slow) pandas reference")
    parser.add_argument("--jobs-only", action="store_true", help="only the --jobs memory (after the first load that builds the cache)")
    args = parser.parse_args()
    rows_out = []
    for rows in args.rows:
        spec = Path(args.data) / f"bigtable-{rows}.yaml"
        if not spec.exists():
            write_table(rows, Path(args.data))
        with tempfile.TemporaryDirectory() as cache:
            env = {"PLE_SEARCH_CACHE": cache}
            arrow = child(LOAD, str(spec), "arrow", env=env)
            cached = child(LOAD, str(spec), "arrow", env=env)
            pandas = {} if args.skip_pandas or args.jobs_only else child(LOAD, str(spec), "pandas", env={"PLE_SEARCH_CACHE": tempfile.mkdtemp()})
            mapped = {} if args.jobs_only else child(EPOCH, str(spec), "mapped", str(args.threads), env=env)
            memory = {} if args.jobs_only else child(EPOCH, str(spec), "memory", str(args.threads), env=env)
            one = run_jobs(spec, 1, env)
            two = run_jobs(spec, 2, env)
            train_size = int(0.8 * arrow["size"])  # what the epoch pages in: the train split (80% of rows)
            limited = limited_epoch(spec, env, Path(cache), train_size, args.ram_limit, args.threads) if args.ram_limit and rows <= args.ram_limit_rows and not args.jobs_only else {}
        result = {"rows": rows, "arrow": arrow, "cached": cached, "pandas": pandas, "mapped": mapped, "memory": memory, "jobs1": one, "jobs2": two, "limited": limited}
        print(json.dumps(result), file=sys.stderr)
        rows_out.append(result)
    print(f"threads {args.threads}; sizes in GiB; peak RSS is the process's (ru_maxrss), 'load' subtracts its RSS after imports")
    print("| rows | arrays | first load, Arrow | first load, pandas | speed-up | peak RSS Arrow (load) | x arrays | peak RSS pandas (load) | cached load | epoch samples/s mapped / in memory | ratio | --jobs 1 PSS | --jobs 2 workers' PSS (with fork server) | ratio | --jobs 2 parent PSS | all processes, ratio to --jobs 1 | --jobs 2 workers' RSS |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows_out:
        a, p = r["arrow"], r["pandas"]
        load_a = (a["peak"] - a["base"]) / GIB
        pandas_s = f"{p['seconds']:.1f} s" if "seconds" in p else "-"
        speed = f"{p['seconds'] / a['seconds']:.1f}x" if "seconds" in p else "-"
        pandas_rss = f"{p['peak'] / GIB:.2f} ({(p['peak'] - p['base']) / GIB:.2f})" if "peak" in p else "-"
        m, mem = r["mapped"].get("samples_per_s", 0), r["memory"].get("samples_per_s", 0)
        j1, j2 = r["jobs1"], r["jobs2"]
        print(
            f"| {r['rows']:,} | {a['size'] / GIB:.2f} | {a['seconds']:.1f} s | {pandas_s} | {speed} | {a['peak'] / GIB:.2f} ({load_a:.2f}) | "
            f"{load_a / (a['size'] / GIB):.2f} | {pandas_rss} | {r['cached']['seconds']:.2f} s | {m:,.0f} / {mem:,.0f} | {m / mem if mem else 0:.2f} | "
            f"{j1.get('workers_pss', 0) / GIB:.2f} | {j2.get('workers_pss', 0) / GIB:.2f} | {j2.get('workers_pss', 0) / max(j1.get('workers_pss', 1), 1):.2f} | "
            f"{j2.get('parent_pss', 0) / GIB:.2f} | {j2.get('total_pss', 0) / max(j1.get('total_pss', 1), 1):.2f} | {j2.get('workers_rss', 0) / GIB:.2f} |"
        )
    for r in rows_out:
        lim = r["limited"]
        if lim and "limit" in lim:
            rate = lambda run: f"{run['samples_per_s']:,.0f} samples/s" if "samples_per_s" in run else f"failed ({run.get('error')})"  # noqa: E731
            print(f"\n{r['rows']:,} rows, one epoch in a memory cgroup (train arrays {0.8 * r['arrow']['size'] / GIB:.2f} GiB): "
                  f"unlimited it charged {lim['unlimited_usage'] / GIB:.2f} GiB ({rate(lim['unlimited'])}); limited to "
                  f"{lim['limit'] / GIB:.2f} GiB (so at most {args.ram_limit:.0%} of the train arrays fit): mapped {rate(lim['mapped'])}, "
                  f"peak {lim['max_usage'] / GIB:.2f} GiB; arrays copied into process memory: {rate(lim['memory'])}")
        elif lim:
            print(f"\n{r['rows']:,} rows in a memory cgroup: {lim.get('error')}")

if __name__ == "__main__":
    main()
