"""Peer systems, as measured on the reference machine (2-core VM, loopback, 100k x 128
float32 vectors; ``../shared/FIELD-NOTES.md``), for context in the benchmarks' reports.

The benchmarks do not re-run them: each needs its own server and packages, which this
repository does not install.  The figures are what was measured then, so a ratio
against them compares this run with that one, on the same kind of machine.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Peer:
    name: str
    #: Single-query p50 at 100k x 128 (ms).
    single_query_ms: float
    #: Add (ingest) throughput, MB/s of float32 vectors; None where not measured.
    add_mbps: float | None
    #: What else was measured, and what the figure means.
    summary: str


PEERS = (
    Peer(
        "Chroma server",
        2.4,
        1_400 * 128 * 4 / 1e6,  # 1.4k vectors/s
        "Chroma server: ingest 1.4k vectors/s, single query 2.4 ms p50 (HNSW, approximate), "
        "filtered (1% match) 40 ms p50, 8-thread 374 QPS, 247 MB RSS",
    ),
    Peer("Milvus Lite 3.2", 68.0, None, "Milvus Lite 3.2: 68 ms per query at 100k (Python-bound), 12 QPS"),
    Peer(
        "FAISSx",
        101.0,
        19.0,
        "FAISSx: single query ~101 ms (polls a worker every 0.1 s), ~9 QPS total, add 19 MB/s",
    ),
)


def ratios(single_query_ms: float, add_mbps: float) -> list[str]:
    """One line per peer: its figures and how many times faster this run's proxy is
    (a single query at 100k, ``single_query_ms``; adding vectors, ``add_mbps``)."""
    lines = []
    for peer in PEERS:
        line = (
            f"{peer.name:<16} single query {peer.single_query_ms:g} ms "
            f"(faiss-proxy {peer.single_query_ms / single_query_ms:.1f}x faster)"
        )
        if peer.add_mbps is not None:
            line += f", add {peer.add_mbps:.3g} MB/s (faiss-proxy {add_mbps / peer.add_mbps:,.0f}x)"
        lines.append(line)
    return lines
