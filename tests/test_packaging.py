"""The wheel: the base install is the client (numpy + rpyc only); the ``[server]`` extra adds the server.

The wheel is built from a clean copy of the repository, inspected, and installed into a fresh
virtual environment without system site packages, where ``faiss_proxy`` must import without faiss.
"""

from __future__ import annotations

import configparser
import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
import textwrap
import tomllib
import zipfile
from email.parser import HeaderParser
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
#: import name in the wheel -> directory in the repository
PACKAGES: dict[str, str] = PYPROJECT["tool"]["setuptools"]["package-dir"]
CLIENT_DEPS = {"numpy", "rpyc"}
SERVER_DEPS = {"faiss-cpu", "tornado", "pyjwt"}

pytestmark = pytest.mark.timeout(600)

# What pip prints when it cannot reach an index (as opposed to a real packaging error).
NETWORK_ERRORS = (
    "NewConnectionError",
    "Failed to establish a new connection",
    "Temporary failure in name resolution",
    "Name or service not known",
    "Network is unreachable",
    "ConnectTimeoutError",
    "ReadTimeoutError",
    "ProxyError",
)


def _run(cmd: list[str], *, timeout: float, what: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    try:
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{what} took over {timeout} s: {exc.stdout!r} {exc.stderr!r}")
    if run.returncode != 0:
        output = run.stdout + run.stderr
        if any(marker in output for marker in NETWORK_ERRORS):
            pytest.skip(f"{what}: the package index is unreachable (network error):\n{output[-2000:]}")
        pytest.fail(f"{what} failed ({run.returncode}):\n{output[-6000:]}")
    return run


def _installed(requirement: str) -> bool:
    req = Requirement(requirement)
    try:
        version = importlib.metadata.version(req.name)
    except importlib.metadata.PackageNotFoundError:
        return False
    return req.specifier.contains(version, prereleases=True)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``python -m build --wheel`` of a clean copy of the repository (no build/, egg-info, caches)."""
    tmp = tmp_path_factory.mktemp("packaging")
    src, out = tmp / "src", tmp / "dist"
    shutil.copytree(
        ROOT,
        src,
        ignore=shutil.ignore_patterns(
            ".git",
            "build",
            "dist",
            "*.egg-info",
            "__pycache__",
            ".*_cache",
            ".tox",
            ".venv",
            "faiss-proxy-data",
            ".benchmarks",
        ),
    )
    # Without isolation when this environment already has the build backend (fast, offline);
    # otherwise an isolated build, which installs the backend from the package index.
    offline = all(_installed(r) for r in PYPROJECT["build-system"]["requires"])
    if importlib.util.find_spec("build") is not None:
        cmd = [sys.executable, "-m", "build", "--wheel", "--outdir", str(out), *(["--no-isolation"] * offline), "."]
    else:
        cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(out)]
        cmd += ["--no-build-isolation"] * offline + ["."]
    _run(cmd, timeout=240, what="building the wheel", cwd=src)
    wheels = list(out.glob("*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def test_wheel_contents(wheel: Path) -> None:
    name = PYPROJECT["project"]["name"].replace("-", "_")
    assert wheel.name.startswith(f"{name}-") and wheel.name.endswith("-py3-none-any.whl"), "a pure-Python wheel"
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    top = {n.split("/")[0] for n in names}
    dist_info = {t for t in top if t.endswith(".dist-info")}
    assert len(dist_info) == 1, dist_info
    # faiss_proxy, faiss_proxy_server, faiss_proxy_admin: no top-level server/, admin/, tests/, bench/ ...
    assert top - dist_info == {"faiss_proxy", "faiss_proxy_server", "faiss_proxy_admin"} == set(PACKAGES)
    for package, directory in PACKAGES.items():
        for path in (ROOT / directory).glob("*.py"):
            assert f"{package}/{path.name}" in names, f"{directory}/{path.name} is missing from the wheel"
    assert "faiss_proxy/py.typed" in names


def test_wheel_metadata(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        dist_info = next(n.split("/")[0] for n in zf.namelist() if n.split("/")[0].endswith(".dist-info"))
        metadata = HeaderParser().parsestr(zf.read(f"{dist_info}/METADATA").decode())
        entry_points = configparser.ConfigParser()
        entry_points.read_string(zf.read(f"{dist_info}/entry_points.txt").decode())
        wheel_info = zf.read(f"{dist_info}/WHEEL").decode()
    assert "Root-Is-Purelib: true" in wheel_info
    assert "server" in metadata.get_all("Provides-Extra", [])
    requires = [Requirement(r) for r in metadata.get_all("Requires-Dist", [])]
    base = {canonicalize_name(r.name) for r in requires if r.marker is None or r.marker.evaluate({"extra": ""})}
    server = {canonicalize_name(r.name) for r in requires if r.marker and r.marker.evaluate({"extra": "server"})}
    assert base == CLIENT_DEPS, f"the base install must need only numpy and rpyc, not {base - CLIENT_DEPS}"
    assert all(r.marker is None for r in requires if canonicalize_name(r.name) in CLIENT_DEPS)
    assert server >= SERVER_DEPS and not server & CLIENT_DEPS, server
    for r in requires:
        if canonicalize_name(r.name) in SERVER_DEPS:
            assert r.marker is not None and "extra" in str(r.marker), f"{r} is not behind an extra"
    scripts = dict(entry_points["console_scripts"])
    assert scripts == {"faiss-proxy": "faiss_proxy_server.entry:main"}


CLIENT_ONLY = textwrap.dedent(
    """
    import importlib.metadata as md
    import sys

    import faiss_proxy

    assert faiss_proxy.__file__.startswith(sys.prefix), faiss_proxy.__file__  # the installed wheel
    try:
        import faiss
    except ImportError:
        pass
    else:
        raise AssertionError(f"faiss is importable: {faiss.__file__}")
    for dist in ("faiss-cpu", "tornado", "pyjwt", "orjson"):
        try:
            md.version(dist)
        except md.PackageNotFoundError:
            pass
        else:
            raise AssertionError(f"the base install pulled in {dist}")
    md.version("numpy"), md.version("rpyc")

    assert faiss_proxy.is_remote() is False
    try:
        faiss_proxy.IndexFlatL2
    except ImportError as exc:
        message = str(exc)
    else:
        raise AssertionError("IndexFlatL2 with neither a server nor faiss")
    assert "configure(" in message and "FAISS_PROXY_URL" in message, message
    print("client-only OK", faiss_proxy.__version__)
    """
)


@pytest.mark.slow
def test_base_install_is_the_client_only(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], timeout=120, what="creating a venv")
    assert "include-system-site-packages = false" in (venv / "pyvenv.cfg").read_text()
    python = venv / "bin" / "python"
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("FAISS_PROXY_") and k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV")
    }
    # numpy and rpyc come from the package index (the pip cache makes this quick after the first run)
    _run(
        [str(python), "-m", "pip", "install", "--disable-pip-version-check", str(wheel)],
        timeout=300,
        what="pip install of the wheel",
        env=env,
        cwd=tmp_path,
    )
    assert (venv / "bin" / "faiss-proxy").exists(), "console script faiss-proxy not installed"
    script = tmp_path / "client_only.py"
    script.write_text(CLIENT_ONLY)
    run = _run([str(python), str(script)], timeout=120, what="the client-only check", env=env, cwd=tmp_path)
    assert run.stdout.startswith("client-only OK"), run.stdout
    # the command is there too, and says what to install instead of a traceback
    cli = subprocess.run(
        [str(venv / "bin" / "faiss-proxy"), "tenant", "list"], capture_output=True, text=True, env=env, timeout=60
    )
    assert cli.returncode == 2 and "pip install 'faiss-proxy[server]'" in cli.stderr, cli.stderr
    assert "Traceback" not in cli.stderr
