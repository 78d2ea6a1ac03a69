"""Hostile-input run of the REST API: schemathesis against ``GET /v1/openapi.json`` of a real server.

Every operation of the OpenAPI description (the ``/v1/rpc`` upgrade included) gets
``--cases`` generated requests in each schemathesis generation mode: *positive* (requests
the schema allows) and *negative* (requests it forbids: wrong types, missing fields,
values out of range, malformed path and query parameters).  Paths name a random index as
often as one of the pre-created fixture indexes, so requests reach real data: ``fz``
(``IndexFlatL2``, d=2, with metadata), ``fzh`` (``HNSW8``) and ``fzi`` (``IVF2,Flat``, trained).
A request that drops, resets or deletes from a fixture index is followed by restoring it.

Each answer is checked:

* **no 5xx** (schemathesis ``not_a_server_error``),
* **no hang**: every request has a ``--timeout`` (10 s); a timeout is a failure,
* the status code is one the description documents for the operation, the content type is
  the documented one, and the body and headers conform to the documented response schema
  (``status_code_conformance``, ``content_type_conformance``, ``response_schema_conformance``,
  ``response_headers_conformance``).

Without ``--url`` the script starts ``python -m faiss_proxy_server serve`` on a free
loopback port in a temporary data directory (with ``--worker-memory-limit-mb 2048``, so a
request that makes FAISS allocate without bound gets a ``MemoryError``/507 instead of
swapping the machine), creates a tenant and a key with the CLI, and stops the server at
the end; the server log's error lines are printed when something failed.

    python bench/fuzz_rest.py                    # 60 cases per operation and mode (>= 1000 requests)
    python bench/fuzz_rest.py --cases 200 --seed 7
    python bench/fuzz_rest.py --url http://127.0.0.1:8000 --key KEY

The exit status is 1 when a request got a 5xx, timed out or broke the schema; the summary
lists cases per operation, the status-code histogram and every distinct failure with a
``curl`` command that reproduces it.  ``tests/test_hostile.py`` runs the same driver with a
few cases per operation.
"""

from __future__ import annotations

import argparse
import base64
import collections
import contextlib
import json
import re
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]
D = 2
#: name -> (index_type, needs training)
FIXTURES: dict[str, tuple[str, bool]] = {
    "fz": ("IndexFlatL2", False),
    "fzh": ("HNSW8", False),
    "fzi": ("IVF2,Flat", True),
}
VECTOR_IDS = ("0", "1", "7", "doc-3")
B64_VECTOR = base64.b64encode(struct.pack(f"<{D}f", 0.5, 0.25)).decode()
B64_VECTORS = base64.b64encode(struct.pack(f"<{3 * D}f", 0.5, 0.25, 1.0, 2.0, -1.0, 0.0)).decode()
DESTRUCTIVE = frozenset({"drop", "reset", "delete_vector"})
SERVE = (sys.executable, "-m", "faiss_proxy_server", "serve")


# --------------------------------------------------------------------------------------
# a tiny HTTP client for the fixtures (not the one under test)
# --------------------------------------------------------------------------------------
def http(base: str, key: str | None, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base.rstrip("/") + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            status, payload = resp.status, resp.read()
    except urllib.error.HTTPError as err:
        status, payload = err.code, err.read()
    try:
        return status, json.loads(payload) if payload else None
    except ValueError:
        return status, payload


# --------------------------------------------------------------------------------------
# the driver
# --------------------------------------------------------------------------------------
@dataclass
class Failure:
    operation: str
    mode: str
    kind: str  # "5xx", "hang", "schema", "error"
    status: int | None
    message: str
    curl: str


@dataclass
class Summary:
    cases: collections.Counter[str] = field(default_factory=collections.Counter)  # per operation
    statuses: collections.Counter[int] = field(default_factory=collections.Counter)
    per_operation: dict[str, collections.Counter[int]] = field(default_factory=dict)
    failures: list[Failure] = field(default_factory=list)
    slowest: tuple[float, str] = (0.0, "")
    seconds: float = 0.0
    serving_after: bool = False

    @property
    def total(self) -> int:
        return sum(self.cases.values())

    def distinct_failures(self) -> list[Failure]:
        seen: set[tuple[str, str, int | None, str]] = set()
        out = []
        for f in self.failures:
            key = (f.operation, f.kind, f.status, f.message.splitlines()[0][:120] if f.message else "")
            if key not in seen:
                seen.add(key)
                out.append(f)
        return out

    @property
    def ok(self) -> bool:
        return not self.failures and self.serving_after


class Fuzzer:
    """Runs schemathesis against one server for one tenant key (see module doc)."""

    def __init__(self, base_url: str, key: str, *, timeout: float = 10.0, seed: int | None = None) -> None:
        self.base = base_url.rstrip("/")
        self.key = key
        self.timeout = timeout
        self.seed = seed
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {key}"
        self.schema = schemathesis.openapi.from_url(self.base + "/v1/openapi.json", timeout=30)

    # --- fixture indexes -----------------------------------------------------------------
    def setup(self) -> None:
        for name in FIXTURES:
            self.restore(name)

    def restore(self, name: str) -> None:
        """(Re)create fixture index ``name`` and fill it, whatever state a case left it in."""
        index_type, trained = FIXTURES[name]
        status, info = http(self.base, self.key, "GET", f"/v1/index/{name}")
        if status == 404:
            status, info = http(
                self.base, self.key, "POST", "/v1/index", {"name": name, "dimension": D, "index_type": index_type}
            )
            if status != 201:
                raise RuntimeError(f"cannot create fixture index {name}: {status} {info}")
        elif status != 200:
            raise RuntimeError(f"fixture index {name}: {status} {info}")
        if trained and not info.get("is_trained"):
            train = [[i % 7 * 0.5, i % 3 * 1.5] for i in range(64)]
            status, body = http(self.base, self.key, "POST", f"/v1/index/{name}/train", {"vectors": train})
            if status != 200:
                raise RuntimeError(f"cannot train fixture index {name}: {status} {body}")
        if info.get("ntotal", 0) < 20 or name == "fz":
            vectors = [
                {"id": ident, "values": [i * 0.25, 1.0 - i * 0.125], "metadata": {"genre": ("jazz", "soul")[i % 2]}}
                for i, ident in enumerate([*VECTOR_IDS, *(f"v{j}" for j in range(20))])
            ]
            status, body = http(self.base, self.key, "POST", f"/v1/index/{name}/vectors", {"vectors": vectors})
            if status != 200:
                raise RuntimeError(f"cannot fill fixture index {name}: {status} {body}")

    # --- one operation ---------------------------------------------------------------------
    def _strategy(self, operation: Any, mode: GenerationMode) -> st.SearchStrategy[Any]:
        strategy = operation.as_strategy(mode)
        path = operation.path
        if "{index}" not in path:
            return strategy
        targets: list[dict[str, str] | None] = [None, *({"index": name} for name in FIXTURES)]

        def aim(pair: tuple[Any, dict[str, str] | None, str, bool]) -> Any:
            case, target, vector_id, fit = pair
            if target is not None:
                case.path_parameters.update(target)
                if "{vector_id}" in path:
                    case.path_parameters["vector_id"] = vector_id
                if fit:
                    _fit_dimension(case)
            return case

        parts = (strategy, st.sampled_from(targets), st.sampled_from(VECTOR_IDS), st.sampled_from([True, True, False]))
        return st.tuples(*parts).map(aim)

    def run_operation(self, operation: Any, cases: int, summary: Summary) -> None:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                self._runner(operation, mode, cases, summary)()
            except Unsatisfiable:
                pass  # e.g. no negative request exists for an operation without parameters

    def _runner(self, operation: Any, mode: GenerationMode, cases: int, summary: Summary) -> Callable[[], None]:
        """A hypothesis test that sends ``cases`` generated requests for ``operation`` in ``mode``."""
        label = operation.label
        op_id = operation.definition.raw.get("operationId", "")
        histogram = summary.per_operation.setdefault(label, collections.Counter())

        @settings(
            max_examples=cases,
            deadline=None,
            database=None,
            derandomize=self.seed is None,
            phases=[Phase.explicit, Phase.generate],  # failures are recorded, nothing to shrink
            suppress_health_check=list(HealthCheck),
            report_multiple_bugs=False,
        )
        @given(case=self._strategy(operation, mode))
        def one(case: Any) -> None:
            self.one_case(case, label, op_id, mode.value, summary, histogram)

        return _seeded(one, self.seed) if self.seed is not None else one

    def one_case(
        self, case: Any, label: str, op_id: str, mode: str, summary: Summary, histogram: collections.Counter[int]
    ) -> None:
        started = time.monotonic()
        try:
            response = case.call(session=self.session, timeout=self.timeout)
        except requests.Timeout as exc:
            summary.cases[label] += 1
            summary.failures.append(Failure(label, mode, "hang", None, f"no answer in {self.timeout} s: {exc}", ""))
            return
        except requests.RequestException as exc:
            summary.cases[label] += 1
            summary.failures.append(Failure(label, mode, "error", None, f"{type(exc).__name__}: {exc}", ""))
            return
        elapsed = time.monotonic() - started
        summary.cases[label] += 1
        summary.statuses[response.status_code] += 1
        histogram[response.status_code] += 1
        if elapsed > summary.slowest[0]:
            summary.slowest = (elapsed, label)
        try:
            case.validate_response(response, checks=CHECKS)
        except Exception as exc:  # schemathesis's FailureGroup (or a check's own error)
            kind = "5xx" if response.status_code >= 500 else "schema"
            curl = case.as_curl_command(headers={"Authorization": "Bearer $KEY"})
            summary.failures.append(Failure(label, mode, kind, response.status_code, _clean(str(exc)), curl))
        if op_id in DESTRUCTIVE and response.status_code == 200:
            target = case.path_parameters.get("index")
            if target in FIXTURES:
                self.restore(target)

    def run(self, cases: int, operations: Callable[[str], bool] | None = None) -> Summary:
        summary = Summary()
        started = time.monotonic()
        self.setup()
        for result in self.schema.get_all_operations():
            operation = result.ok()
            if operations is not None and not operations(operation.label):
                continue
            self.run_operation(operation, cases, summary)
        summary.seconds = time.monotonic() - started
        summary.serving_after = self.still_serving()
        return summary

    def still_serving(self) -> bool:
        self.setup()
        status, body = http(self.base, self.key, "POST", "/v1/index/fz/search", {"vector": [0.0, 1.0], "k": 3})
        health, _ = http(self.base, None, "GET", "/v1/health")
        return status == 200 and len(body["results"]) == 3 and health == 200


def _fit(values: Any) -> Any:
    """A generated vector cut or padded to the fixtures' dimension (its values kept)."""
    return [*values, *([0.5] * D)][:D] if isinstance(values, list) else values


def _fit_item(item: Any) -> Any:
    if not isinstance(item, dict):
        return _fit(item)
    if "values" in item:
        item = {**item, "values": _fit(item["values"])}
    if "values_b64" in item:
        item = {**item, "values_b64": B64_VECTOR}
    return item


def _fit_dimension(case: Any) -> None:
    """Make the vectors of a generated request match the fixture indexes' dimension, so
    that it gets past the dimension check to FAISS (the other fields stay as generated)."""
    body = case.body
    if isinstance(body, dict):
        if "vector" in body:
            body["vector"] = _fit(body["vector"])
        if "values_b64" in body:
            body["values_b64"] = B64_VECTORS
        if isinstance(body.get("vectors"), list):
            body["vectors"] = [_fit_item(item) for item in body["vectors"]]
    if isinstance(case.query, dict) and "vector" in case.query:
        case.query["vector"] = "0.5,0.25"


def _seeded(fn: Any, seed: int) -> Any:
    from hypothesis import seed as hypothesis_seed

    return hypothesis_seed(seed)(fn)


def _clean(text: str) -> str:
    """schemathesis's failure report, without its reproduction boilerplate."""
    text = re.sub(r"\n+Reproduce with:.*", "", text, flags=re.S)
    return text.strip()[:2000]


def print_summary(summary: Summary, out: Callable[[str], None] = print) -> None:
    out(f"\n{summary.total} requests in {summary.seconds:.1f} s ({len(summary.cases)} operations)")
    out(f"{'operation':<52} {'cases':>6}  status codes")
    for label in sorted(summary.cases):
        hist = summary.per_operation.get(label, {})
        codes = " ".join(f"{code}:{n}" for code, n in sorted(hist.items()))
        out(f"{label:<52} {summary.cases[label]:>6}  {codes}")
    out("status histogram: " + ", ".join(f"{code}: {n}" for code, n in sorted(summary.statuses.items())))
    out(f"slowest answer: {summary.slowest[0] * 1000:.0f} ms ({summary.slowest[1]})")
    kinds = collections.Counter(f.kind for f in summary.failures)
    out(f"failures: {len(summary.failures)} " + (str(dict(kinds)) if kinds else ""))
    for f in summary.distinct_failures():
        out(f"--- {f.kind} {f.status} {f.operation} ({f.mode})\n{f.message}")
        if f.curl:
            out(f"reproduce: {f.curl}")
    out(f"server still serving afterwards: {'yes' if summary.serving_after else 'NO'}")


# --------------------------------------------------------------------------------------
# a server of its own
# --------------------------------------------------------------------------------------
def _cli(data_dir: str, *args: str) -> str:
    cmd = [sys.executable, "-m", "faiss_proxy_server", *args, "--data-dir", data_dir]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=120)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args[:2])} failed ({done.returncode}):\n{done.stderr}")
    return done.stdout


@dataclass
class LocalServer:
    url: str
    key: str
    log_path: Path
    proc: subprocess.Popen[str]

    def error_lines(self) -> list[str]:
        lines = self.log_path.read_text(errors="replace").splitlines()
        return [line for line in lines if re.search(r"ERROR|Traceback|worker died|status=5\d\d", line)]


@contextlib.contextmanager
def local_server(memory_limit_mb: int) -> Iterator[LocalServer]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with tempfile.TemporaryDirectory(prefix="faiss-proxy-fuzz-") as tmp:
        data_dir = str(Path(tmp) / "data")
        log_path = Path(tmp) / "server.log"
        cmd = [*SERVE, "--port", str(port), "--data-dir", data_dir, "--log-level", "warning"]
        cmd += ["--worker-memory-limit-mb", str(memory_limit_mb)]
        with open(log_path, "w") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True)
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 60
            while True:
                with contextlib.suppress(OSError):
                    if http(url, None, "GET", "/v1/health")[0] == 200:
                        break
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"faiss-proxy serve did not come up:\n{log_path.read_text()}")
                time.sleep(0.1)
            _cli(data_dir, "tenant", "create", "fuzz")
            key = _cli(data_dir, "key", "create", "fuzz").strip().splitlines()[-1]
            yield LocalServer(url, key, log_path, proc)
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", type=int, default=60, help="generated requests per operation and mode (default 60)")
    p.add_argument("--seed", type=int, default=None, help="hypothesis seed (default: derandomized, reproducible)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds before a request counts as a hang")
    p.add_argument("--url", help="an already running server (default: start one)")
    p.add_argument("--key", help="an API key of a tenant of --url (its indexes fz, fzh, fzi are overwritten)")
    p.add_argument("--memory-limit-mb", type=int, default=2048, help="worker memory limit of the started server")
    p.add_argument("--only", default="", help="regular expression: run only the operations whose label matches")
    args = p.parse_args(argv)
    only = re.compile(args.only) if args.only else None
    select = (lambda label: bool(only.search(label))) if only else None

    def fuzz(url: str, key: str) -> Summary:
        fuzzer = Fuzzer(url, key, timeout=args.timeout, seed=args.seed)
        summary = fuzzer.run(args.cases, select)
        print_summary(summary)
        return summary

    if args.url:
        if not args.key:
            raise SystemExit("--url needs --key")
        summary = fuzz(args.url, args.key)
    else:
        with local_server(args.memory_limit_mb) as server:
            summary = fuzz(server.url, server.key)
            errors = server.error_lines()
            if errors and not summary.ok:
                print("\nserver log (errors):\n" + "\n".join(errors[-60:]))
    return 0 if summary.ok else 1


if __name__ == "__main__":
    sys.exit(main())
