"""Sweep FAISS for sizes that crash or hang it, through the server's own checks.

Two sweeps, each case in a forked child (a crash kills only the child; a hang is ended by
``SIGALRM`` after ``--timeout`` s):

* **factory strings**: every template below with each size in 0-3, d=8; a string the
  server refuses (:func:`faiss_proxy_server.reflection.check_factory`) is skipped; the
  rest are built, checked (:func:`check_built`), trained on 300 vectors, filled,
  searched, serialized and read back;
* **class constructors**: every class the server exposes, called with small and zero
  integer arguments after :func:`check_constructor`; an object that is built and passes
  :func:`check_built` is not used further (the factory sweep covers using them).

A case that ends with an exception is fine (the server turns it into a 4xx or the same
Python exception); one that ends with a signal is a finding.  Exit status 1 if any.

    python bench/sweep_degenerate.py            # about a minute on 2 cores
"""

from __future__ import annotations

import argparse
import itertools
import os
import signal
import sys
from collections.abc import Callable

import faiss
import numpy as np

from faiss_proxy_server.reflection import Reflection, check_built, check_constructor, check_factory

TEMPLATES = [
    "IVF{a},Flat", "IVF{a},SQ8", "IVF{a},SQ{b}", "IVF{a},SQfp16", "IVF{a},PQ{b}", "IVF{a},PQ{b}x{c}",
    "IVF{a},PQ{b}x4fs", "IVF{a},PQ{b}x{c}fsr", "IVF{a}_HNSW{b},Flat", "IVF{a}(PQ{b}),Flat", "IVF{a},RaBitQ",
    "IVF{a},RaBitQ{b}", "IVF{a},RQ{b}x{c}", "IVF{a},LSQ{b}x{c}_Nqint8", "IVF{a},ZnLattice{b}x{c}_4",
    "IVF{a},Flat,Refine(Flat)", "IVF{a},PQ{b},RFlat", "IMI{a}x{b},Flat", "IMI{a}x{b},PQ{c}", "Residual{a}x{b},Flat",
    "PQ{a}", "PQ{a}x{b}", "PQ{a}x4fs", "PQ{a}x{b}fs", "PQ{a}np", "PQ{a},RFlat", "SQ{a}", "RQ{a}x{b}", "RQ{a}x{b}_{c}",
    "LSQ{a}x{b}", "PRQ{a}x{b}x{c}", "PLSQ{a}x{b}x{c}", "HNSW{a}", "HNSW{a},Flat", "HNSW{a}_SQ{b}", "HNSW{a}_PQ{b}",
    "HNSW{a}_PQ{b}x{c}", "HNSW{a}_{b}", "NSG{a}", "NSG{a},Flat", "NSG{a}_PQ{b}", "OPQ{a},PQ{b}", "OPQ{a}_{b},PQ{c}",
    "PCA{a},Flat", "PCAR{a},Flat", "PCAW{a},Flat", "RR{a},Flat", "ITQ{a},LSH", "Pad{a},Flat", "ZnLattice{a}x{b}_{c}",
    "LSH", "LSHr", "IDMap,Flat", "RaBitQ",
]  # fmt: skip
CONSTRUCTOR_ARGS = [(0,), (8, 0), (8, 0, 0), (8, 2, 0), (8, 0, 8), (8, 1), (8, 2, 1), (8, 1, 1)]
X = np.random.RandomState(0).rand(300, 8).astype("float32")


def in_child(fn: Callable[[], None], timeout: int) -> int | None:
    """Run ``fn`` in a forked child; the signal that ended it, or None."""
    pid = os.fork()
    if pid == 0:
        signal.alarm(timeout)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        try:
            fn()
        except Exception:
            os._exit(3)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    return os.WTERMSIG(status) if os.WIFSIGNALED(status) else None


def factory_strings() -> list[str]:
    out = set()
    for template in TEMPLATES:
        names = "abc"[: template.count("{")]
        for sizes in itertools.product(range(4), repeat=len(names)):
            out.add(template.format(**dict(zip(names, sizes, strict=True))))
    return sorted(out)


def use_factory(description: str) -> None:
    index = faiss.index_factory(8, description)
    check_built(index)
    if not index.is_trained:
        index.train(X)
    index.add(X)
    index.search(X[:3], 2)
    faiss.deserialize_index(faiss.serialize_index(index))


def construct(cls: type, args: tuple[int, ...]) -> None:
    check_constructor(cls, args)
    check_built(cls(*args))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timeout", type=int, default=10, help="seconds before a case counts as a hang")
    args = parser.parse_args(argv)
    findings: list[str] = []

    strings = factory_strings()
    accepted = []
    for description in strings:
        try:
            check_factory(description)
        except ValueError:
            continue
        accepted.append(description)
    for description in accepted:
        sig = in_child(lambda d=description: use_factory(d), args.timeout)
        if sig is not None:
            findings.append(f"index_factory(8, {description!r}): {signal.Signals(sig).name}")
    print(f"factory strings: {len(strings)} from {len(TEMPLATES)} templates, {len(accepted)} accepted by the server")

    classes = sorted(Reflection(faiss).classes.items())
    for name, cls in classes:
        for ctor_args in CONSTRUCTOR_ARGS:
            sig = in_child(lambda c=cls, a=ctor_args: construct(c, a), args.timeout)
            if sig is not None:
                findings.append(f"{name}{ctor_args}: {signal.Signals(sig).name}")
    print(f"constructors: {len(classes)} classes x {len(CONSTRUCTOR_ARGS)} argument lists")

    for finding in findings:
        print("  CRASH or HANG", finding)
    print(f"{len(findings)} cases crash or hang FAISS past the server's checks")
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
