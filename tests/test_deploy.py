"""The Docker image, checked by reading its Dockerfile and .dockerignore (no Docker engine needed).

The HEALTHCHECK command is also run for real against a live server.
"""

from __future__ import annotations

import datetime
import http.server
import json
import re
import shlex
import socket
import ssl
import subprocess
import sys
import threading
import tomllib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pytest

from .conftest import LiveServer

ROOT = Path(__file__).resolve().parent.parent
ENTRYPOINT = ["faiss-proxy", "serve", "--host", "0.0.0.0"]


@dataclass
class Instruction:
    name: str  # upper case: FROM, RUN, COPY, ...
    args: str  # the rest of the (joined) line

    def flags_and_words(self) -> tuple[dict[str, str], list[str]]:
        """``--chown=a --from=b x y`` -> ({"chown": "a", "from": "b"}, ["x", "y"]); JSON form too."""
        if self.args.lstrip().startswith("["):
            return {}, json.loads(self.args)
        flags: dict[str, str] = {}
        words = shlex.split(self.args)
        while words and words[0].startswith("--"):
            key, _, value = words.pop(0)[2:].partition("=")
            flags[key] = value
        return flags, words


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions of a Dockerfile: comments dropped, ``\\`` continuations joined."""
    instructions: list[Instruction] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = (pending + stripped).strip()
        pending = ""
        name, _, args = full.partition(" ")
        instructions.append(Instruction(name.upper(), args.strip()))
    assert not pending, "Dockerfile ends inside a continued line"
    return instructions


def final_stage(instructions: list[Instruction]) -> list[Instruction]:
    starts = [i for i, ins in enumerate(instructions) if ins.name == "FROM"]
    assert starts and starts[0] == 0, "a Dockerfile starts with FROM"
    return instructions[starts[-1] :]


def env_of(stage: list[Instruction]) -> dict[str, str]:
    env: dict[str, str] = {}
    for ins in stage:
        if ins.name != "ENV":
            continue
        words = shlex.split(ins.args)
        if "=" not in words[0]:  # legacy ``ENV KEY value``
            env[words[0]] = " ".join(words[1:])
        else:
            env.update(w.partition("=")[::2] for w in words)
    return env


def dockerignore_excludes(patterns: list[str], path: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides; ``!`` re-includes."""

    def to_regex(pattern: str) -> re.Pattern[str]:
        out, i = "", 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                out, i = out + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                out, i = out + ".*", i + 2
            elif pattern[i] == "*":
                out, i = out + "[^/]*", i + 1
            elif pattern[i] == "?":
                out, i = out + "[^/]", i + 1
            elif pattern[i] == "[":
                end = pattern.index("]", i)
                out, i = out + pattern[i : end + 1], end + 1
            else:
                out, i = out + re.escape(pattern[i]), i + 1
        return re.compile(out + r"\Z")

    parts = PurePosixPath(path).parts
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for raw in patterns:
        negate = raw.startswith("!")
        pattern = str(PurePosixPath(raw.lstrip("!").strip().lstrip("/")))
        if any(to_regex(pattern).match(c) for c in candidates):
            excluded = not negate
    return excluded


@pytest.fixture(scope="module")
def stage() -> list[Instruction]:
    return final_stage(parse_dockerfile((ROOT / "Dockerfile").read_text()))


@pytest.fixture(scope="module")
def ignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def one(stage: list[Instruction], name: str) -> Instruction:
    found = [ins for ins in stage if ins.name == name]
    assert len(found) == 1, f"expected one {name}, found {len(found)}"
    return found[0]


def copied_sources(stage: list[Instruction]) -> list[str]:
    sources: list[str] = []
    for ins in stage:
        if ins.name in ("COPY", "ADD"):
            assert ins.name == "COPY", "use COPY, not ADD"
            flags, words = ins.flags_and_words()
            assert "from" not in flags, "single-stage image: COPY only from the build context"
            sources += words[:-1]
    return sources


def test_base_image_is_python_slim(stage: list[Instruction]) -> None:
    image = stage[0].args.split()[0]
    m = re.fullmatch(r"python:(\d+)\.(\d+)(?:\.\d+)?-slim(?:-[a-z]+)?(?:@sha256:[0-9a-f]{64})?", image)
    assert m, f"base image {image!r} is not python:X.Y-slim"
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    minimum = tuple(int(x) for x in re.fullmatch(r">=\s*(\d+)\.(\d+)", requires).groups())  # type: ignore[union-attr]
    assert (int(m.group(1)), int(m.group(2))) >= minimum, f"{image} is older than requires-python {requires}"


def test_runs_as_a_created_non_root_user(stage: list[Instruction]) -> None:
    names = [ins.name for ins in stage]
    entry = names.index("ENTRYPOINT")
    users = [ins.args.split()[0] for ins in stage[:entry] if ins.name == "USER"]
    assert users, "no USER before ENTRYPOINT: the server would run as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), f"USER {users[-1]} is root"
    assert "USER" not in names[entry:], "USER after ENTRYPOINT"
    runs = " ".join(ins.args for ins in stage if ins.name == "RUN")
    assert re.search(rf"\b(useradd|adduser)\b[^&;]*\b{re.escape(user)}\b", runs), f"user {user} is never created"


def test_data_volume(stage: list[Instruction]) -> None:
    volumes: list[str] = []
    for ins in stage:
        if ins.name == "VOLUME":
            volumes += ins.flags_and_words()[1]
    assert volumes, "no VOLUME for the data directory"
    data_dir = env_of(stage).get("FAISS_PROXY_DATA_DIR")
    assert data_dir, "FAISS_PROXY_DATA_DIR is not set"
    assert any(PurePosixPath(data_dir).is_relative_to(v) for v in volumes), f"{data_dir} is not in a VOLUME {volumes}"
    # The volume exists in the image and belongs to the user (a fresh named volume copies its owner).
    user = [ins.args for ins in stage if ins.name == "USER"][-1].split(":")[0]
    runs = [ins.args for ins in stage if ins.name == "RUN"]
    volume = next(v for v in volumes if PurePosixPath(data_dir).is_relative_to(v))
    assert any(re.search(rf"chown\s+(-R\s+)?{user}\S*\s+{re.escape(volume)}\b", r) for r in runs), runs


def test_port_health_and_entrypoint(stage: list[Instruction]) -> None:
    assert [ins.args for ins in stage if ins.name == "EXPOSE"] == ["8000"]
    health = one(stage, "HEALTHCHECK")
    assert "/v1/health" in health.args and re.search(r"\bCMD\b", health.args)
    assert not re.search(r"\b(curl|wget)\b", health.args), "python:*-slim has neither curl nor wget"
    entry = one(stage, "ENTRYPOINT")
    assert entry.args.startswith("["), "ENTRYPOINT must be in exec form (a JSON array) so signals reach the server"
    assert json.loads(entry.args) == ENTRYPOINT
    assert stage[-1].name in ("ENTRYPOINT", "CMD")
    assert all(ins.args.startswith("[") for ins in stage if ins.name == "CMD"), "CMD must be in exec form"
    env = env_of(stage)
    assert env.get("PYTHONUNBUFFERED") == "1", "logs must not sit in a buffer"


def test_installs_the_server_extra(stage: list[Instruction]) -> None:
    installs = [ins.args for ins in stage if ins.name == "RUN" and "pip install" in ins.args]
    assert len(installs) == 1, installs
    words = shlex.split(installs[0].split("&&")[0])
    assert "--no-cache-dir" in words
    targets = [w for w in words[words.index("install") + 1 :] if not w.startswith("-")]
    assert len(targets) == 1 and targets[0].endswith("[server]"), f"pip install {targets}: not the [server] extra"
    # the target is the directory the sources were copied to
    destinations = {ins.flags_and_words()[1][-1].rstrip("/") for ins in stage if ins.name == "COPY"}
    assert targets[0].removesuffix("[server]").rstrip("/") in destinations


def test_copies_exactly_what_the_wheel_is_built_from(stage: list[Instruction], ignore_patterns: list[str]) -> None:
    sources = copied_sources(stage)
    assert sources and "." not in sources and "./" not in sources, "COPY . would copy tests, bench, data, ..."
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    needed = {
        "pyproject.toml",
        pyproject["project"]["readme"],
        *pyproject["tool"]["setuptools"]["package-dir"].values(),
    }
    assert {s.rstrip("/") for s in sources} == needed
    for source in sources:
        assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
        assert not dockerignore_excludes(ignore_patterns, source.rstrip("/")), (
            f"COPY {source}: excluded by .dockerignore"
        )
    # every tracked source file under the copied directories reaches the build context
    for directory in needed - {"pyproject.toml", pyproject["project"]["readme"]}:
        for path in (ROOT / directory).rglob("*.py"):
            rel = path.relative_to(ROOT).as_posix()
            if "__pycache__" not in rel:
                assert not dockerignore_excludes(ignore_patterns, rel), f"{rel} is excluded by .dockerignore"


@pytest.mark.parametrize(
    "path",
    [
        ".git/HEAD",
        ".gitignore",
        "tests/test_deploy.py",
        "bench/bench_core.py",
        ".benchmarks/Linux-CPython-3.11-64bit/0001.json",
        "examples/quickstart.py",
        "docs/deploy.md",
        "Dockerfile",
        "build/lib/faiss_proxy/__init__.py",
        "dist/faiss_proxy-0.1.0-py3-none-any.whl",
        "faiss_proxy.egg-info/PKG-INFO",
        "server/__pycache__/app.cpython-311.pyc",
        "faiss_proxy/__pycache__/_client.cpython-311.pyc",
        ".mypy_cache/3.11/faiss_proxy/__init__.data.json",
        ".ruff_cache/CACHEDIR.TAG",
        ".pytest_cache/v/cache/lastfailed",
        ".tox/py311/bin/python",
        ".venv/bin/python",
        "faiss-proxy-data/catalog.sqlite3",
        "faiss-proxy-data/secret.key",
        "certs/server.key",
    ],
)
def test_dockerignore_keeps_out(ignore_patterns: list[str], path: str) -> None:
    assert dockerignore_excludes(ignore_patterns, path), f"{path} would be sent to the Docker daemon"


def test_dockerignore_matcher() -> None:
    # Docker's semantics, as this test reads them
    assert dockerignore_excludes([".git"], ".git/objects/ab")
    assert not dockerignore_excludes(["*", "!server"], "server/app.py")
    assert dockerignore_excludes(["*", "!server", "**/__pycache__"], "server/__pycache__/a.pyc")
    assert not dockerignore_excludes(["*.md"], "docs/deploy.md")  # * does not cross /
    assert dockerignore_excludes(["**/*.md"], "docs/deploy.md")


def healthcheck_command(stage: list[Instruction]) -> list[str]:
    args = one(stage, "HEALTHCHECK").args
    cmd = args[re.search(r"\bCMD\b", args).end() :].strip()  # type: ignore[union-attr]
    return json.loads(cmd) if cmd.startswith("[") else ["/bin/sh", "-c", cmd]


def test_healthcheck_command_works(stage: list[Instruction], server: LiveServer, tmp_path: Path) -> None:
    command = healthcheck_command(stage)
    assert command[0] == "python"
    command[0] = sys.executable
    port = server.url.rsplit(":", 1)[1]

    def health(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        base = {"PATH": "/usr/bin:/bin"}  # as in the image: no FAISS_PROXY_* but what we set
        return subprocess.run(command, env={**base, **env}, capture_output=True, text=True, timeout=30, cwd=tmp_path)

    ok = health({"FAISS_PROXY_PORT": port})
    assert ok.returncode == 0, ok.stderr
    # a server that is down (a free port nobody listens on) is unhealthy
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = str(s.getsockname()[1])
    down = health({"FAISS_PROXY_PORT": free})
    assert down.returncode != 0


def _self_signed(directory: Path) -> tuple[Path, Path]:
    """A throw-away certificate for a name that is not 127.0.0.1 (the check must not verify it)."""
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "faiss-proxy.example")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


def test_healthcheck_speaks_https_when_tls_is_configured(stage: list[Instruction], tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/v1/health" else 404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Health)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        command = [sys.executable, *healthcheck_command(stage)[1:]]
        env = {"PATH": "/usr/bin:/bin", "FAISS_PROXY_PORT": str(httpd.server_address[1])}
        run = subprocess.run(
            command, env={**env, "FAISS_PROXY_TLS_CERT": str(cert)}, capture_output=True, text=True, timeout=30
        )
        assert run.returncode == 0, run.stderr
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(10)


# ----------------------------------------------------------------------------------
# docs/deploy.md stays true to the image and the settings
# ----------------------------------------------------------------------------------
DEPLOY = ROOT / "docs" / "deploy.md"
CLIENT_ENV = {"FAISS_PROXY_URL", "FAISS_PROXY_API_KEY", "FAISS_PROXY_TIMEOUT", "FAISS_PROXY_SPIN_US", "FAISS_PROXY_CA"}


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)\n```", DEPLOY.read_text(), re.S)


def test_deploy_doc_names_real_settings() -> None:
    from faiss_proxy_server.config import SETTINGS

    known = {s.env for s in SETTINGS} | CLIENT_ENV
    named = set(re.findall(r"\bFAISS_PROXY_[A-Z_]+\b", DEPLOY.read_text()))
    assert named <= known, f"docs/deploy.md names unknown variables: {named - known}"
    assert {"FAISS_PROXY_TLS_CERT", "FAISS_PROXY_TLS_KEY", "FAISS_PROXY_CA"} <= named
    max_body = next(s.default for s in SETTINGS if s.name == "max_body_mb")
    sizes = re.findall(r"client_max_body_size\s+(\d+)m;", DEPLOY.read_text())
    assert sizes == [str(max_body)], f"nginx client_max_body_size {sizes} != max_body_mb {max_body}"


def test_deploy_doc_matches_the_image(stage: list[Instruction]) -> None:
    text = DEPLOY.read_text()
    image = stage[0].args.split()[0]
    assert set(re.findall(r"\bpython:[\w.]+-slim\b", text)) == {image}
    volume = env_of(stage)["FAISS_PROXY_DATA_DIR"]
    (compose,) = [b for b in _blocks("yaml") if "services:" in b]
    for needed in (f":{volume}", "restart:", "healthcheck:", "/v1/health", "stop_grace_period:", "8000:8000"):
        assert needed in compose, f"compose example lacks {needed!r}"
    try:
        import yaml
    except ImportError:
        yaml = None
    if yaml is not None:
        service = yaml.safe_load(compose)["services"]["faiss-proxy"]
        assert any(v.endswith(f":{volume}") for v in service["volumes"])
        assert service["restart"] in ("always", "unless-stopped", "on-failure")
        assert all(k.startswith("FAISS_PROXY_") for k in service["environment"])
    (nginx,) = [b for b in _blocks("nginx") if "location /v1/rpc" in b]
    rpc = nginx[nginx.index("location /v1/rpc") :]
    rpc = rpc[: rpc.index("}")]
    for needed in (
        "proxy_http_version 1.1;",
        "proxy_set_header Upgrade $http_upgrade;",
        'proxy_set_header Connection "upgrade";',
        "proxy_buffering off;",
        "proxy_read_timeout",
    ):
        assert needed in rpc, f"nginx /v1/rpc location lacks {needed!r}"
    for command in ("tenant create", "key create"):
        assert f"docker compose exec -T faiss-proxy faiss-proxy {command}" in text
