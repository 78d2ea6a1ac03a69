"""A/B of single-query latency: this checkout against another one, in one process.

The host's speed drifts by a third within minutes, and at 100k vectors the per-round
differences of one configuration swing by hundreds of microseconds, so two full runs of
``bench_core.py`` from two checkouts cannot resolve a change of 20-40 µs.  This script
measures both in the same minutes: it starts two servers, one from this checkout and one
from ``--base`` (another checkout, e.g. ``git worktree add /tmp/base HEAD~1``), loads the
base's client package under another name next to this one, and runs local FAISS and a
remote ``IndexFlatL2`` on each server in alternating rounds, pinned as ``bench_core``
pins them (this process on one CPU, both workers on the other, swapped every round; the
two remotes take turns in both orders).  It prints, per size, each side's p50 minus local
FAISS's and the median of the per-round differences new - base.

    git worktree add /tmp/base HEAD~1
    python bench/ab_core.py --base /tmp/base                 # 10k and 100k, 30 rounds
    python bench/ab_core.py --base /tmp/base --sizes 100 10000 --rounds 20

Like ``bench_core.py`` it re-runs itself with the workers' huge-page tunable, so local
FAISS is measured like for like.  Not a test: nothing fails.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any

import faiss
import numpy as np

import faiss_proxy

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_core as bc


def load_base_client(base: Path) -> ModuleType:
    """The base checkout's ``faiss_proxy`` package, imported as ``faiss_proxy_base``."""
    spec = importlib.util.spec_from_file_location(
        "faiss_proxy_base", base / "faiss_proxy" / "__init__.py", submodule_search_locations=[str(base / "faiss_proxy")]
    )
    if spec is None or spec.loader is None:
        raise SystemExit(f"no faiss_proxy package in {base}")
    module = importlib.util.module_from_spec(spec)
    sys.modules["faiss_proxy_base"] = module
    spec.loader.exec_module(module)
    return module


def compare(nb: int, rounds: int, base_index: Any, new_index: Any, pids: list[int]) -> str:
    data = bc.make_dataset(nb, 1100)
    local = faiss.IndexFlatL2(bc.D)
    local.add(data.xb)
    for remote in (base_index, new_index):
        remote.reset()
        remote.add(data.xb)
        if not np.array_equal(remote.search(data.xq[:10], bc.K)[1], local.search(data.xq[:10], bc.K)[1]):
            raise SystemExit(f"a remote search differs from local FAISS at nb={nb}")
    cpus = bc.alternation_cpus()
    medians: dict[str, list[float]] = {"local": [], "base": [], "new": []}
    before = os.sched_getaffinity(0) if cpus else set()
    try:
        for r in range(rounds):
            if cpus:
                os.sched_setaffinity(0, {cpus[r % 2]})
                bc.pin([t for pid in pids for t in bc.worker_threads(pid)], {cpus[(r + 1) % 2]})
            turns = [("base", base_index), ("new", new_index)]
            for name, index in [("local", local), *(turns if r % 4 < 2 else turns[::-1])]:
                medians[name].append(float(np.median(bc.single_query_samples(index, data.xq, 50, 5))))
    finally:
        if cpus:
            os.sched_setaffinity(0, before)
    lo, b, n = (np.array(medians[k]) for k in ("local", "base", "new"))
    return (
        f"nb={nb:,}: local {np.median(lo):.0f} µs | base - local {np.median(b - lo):+.0f} µs | "
        f"new - local {np.median(n - lo):+.0f} µs | new - base per round: median {np.median(n - b):+.0f} µs, "
        f"new faster in {np.mean(n < b) * 100:.0f}% of {rounds} rounds"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--base", required=True, type=Path, help="another checkout of faiss-proxy to compare with")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args(argv)
    base = args.base.resolve()
    if not (base / "faiss_proxy").is_dir() or not (base / "server").is_dir():
        parser.error(f"{base} is not a faiss-proxy checkout")
    bc.like_for_like(sys.argv[1:] if argv is None else argv, __file__)
    faiss.omp_set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="faiss-proxy-ab-base-") as links:
        (Path(links) / "faiss_proxy").symlink_to(base / "faiss_proxy")
        (Path(links) / "faiss_proxy_server").symlink_to(base / "server")
        base_client = load_base_client(base)
        with (
            bc.local_server(Path(links)) as (base_url, base_key, base_pid, _),
            bc.local_server() as (new_url, new_key, new_pid, _),
        ):
            base_client.configure(api_url=base_url, api_key=base_key)
            faiss_proxy.configure(api_url=new_url, api_key=new_key)
            try:
                base_index = base_client.IndexFlatL2(bc.D)
                new_index = faiss_proxy.IndexFlatL2(bc.D)
                print(f"base {base} against this checkout; {args.rounds} rounds of 50 single queries per size")
                for nb in args.sizes:
                    pids = [pid for pid in (base_pid, new_pid) if pid is not None]
                    print(compare(nb, args.rounds, base_index, new_index, pids), flush=True)
            finally:
                base_client.configure(api_url="")
                faiss_proxy.configure(api_url="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
