"""Load: 10 tenants, RPC and REST clients mixed, 90% search / 10% add, 10 s, against the real server.

A small version of ``bench/load.py`` (whose code it runs): zero errors, and every
acknowledged add is in its tenant's index afterwards.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import load


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_ten_tenants_ten_seconds_zero_errors_nothing_lost() -> None:
    plan = load.Plan(tenants=10, clients_per_tenant=4, seconds=10.0, n=2000, d=32, procs=2)
    lines: list[str] = []
    report = load.run(plan, out=lines.append)
    load.print_report(report, out=lines.append)
    text = "\n".join(lines)
    print(text)
    assert report.errors == 0, text
    assert len(report.ntotal) == plan.tenants, text
    for tenant, ntotal in report.ntotal.items():
        assert ntotal == plan.n + report.acked[tenant], f"{tenant}: acknowledged adds lost\n{text}"
    assert report.lost == 0 and report.spot_missing == 0 and report.spot_checked > 0, text
    # every client did real work on both APIs, searches and adds
    for key in (("rpc", "search"), ("rpc", "add"), ("rest", "search"), ("rest", "add")):
        assert len(report.latencies[key]) > 0, f"no {key} operations\n{text}"
    assert sum(report.acked.values()) > 0
    assert report.ok
