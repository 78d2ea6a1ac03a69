"""Docs match the code, and the code passes its linters and type checker."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from faiss_proxy_server.config import SETTINGS, load_settings

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: s.name)
def test_every_setting_is_in_the_readme(setting) -> None:  # type: ignore[no-untyped-def]
    row = next((line for line in README.splitlines() if line.startswith(f"| `{setting.name}` |")), None)
    assert row is not None, f"README settings table lacks {setting.name}"
    assert f"`{setting.flag}`" in row and f"`{setting.env}`" in row and repr(setting.default) in row


def test_settings_precedence() -> None:
    import argparse

    env = {"FAISS_PROXY_PORT": "9001", "FAISS_PROXY_WORKER_IDLE_TIMEOUT": "12.5"}
    assert load_settings(None, env).port == 9001
    assert load_settings(None, env).worker_idle_timeout == 12.5
    assert load_settings(argparse.Namespace(port="9002"), env).port == 9002
    assert load_settings(None, {}).host == "127.0.0.1"
    with pytest.raises(SystemExit, match="FAISS_PROXY_PORT"):
        load_settings(None, {"FAISS_PROXY_PORT": "eighty"})
    # A range is checked where a setting has one (a spin of minutes would burn a core).
    assert load_settings(argparse.Namespace(session_spin_us="0"), {}).session_spin_us == 0
    with pytest.raises(SystemExit, match=r"--session-spin-us: must be between 0 and 100000"):
        load_settings(argparse.Namespace(session_spin_us="1e9"), {})
    with pytest.raises(SystemExit, match="FAISS_PROXY_SESSION_SPIN_US"):
        load_settings(None, {"FAISS_PROXY_SESSION_SPIN_US": "-1"})
    # So are the choices of an on/off setting (a typo must not mean "off").
    assert load_settings(None, {"FAISS_PROXY_WORKER_HUGE_PAGES": "off"}).worker_huge_pages == "off"
    assert load_settings(None, {}).worker_huge_pages == "on"
    with pytest.raises(SystemExit, match=r"FAISS_PROXY_WORKER_HUGE_PAGES/--worker-huge-pages: must be one of on, off"):
        load_settings(None, {"FAISS_PROXY_WORKER_HUGE_PAGES": "yes"})
    with pytest.raises(SystemExit, match="--worker-sandbox"):
        load_settings(argparse.Namespace(worker_sandbox="On"), {})


def test_readme_two_commands_match_ci() -> None:
    blocks = re.findall(r"```sh\n(.*?)\n```", README, re.S)
    assert 'pip install ".[server]" && faiss-proxy serve' in blocks
    test_command = 'pip install -e ".[server,test]" && python -m pytest'
    assert test_command in blocks
    assert test_command in (ROOT / ".ci" / "run").read_text()


def test_ruff() -> None:
    if shutil.which("ruff") is None:
        pytest.skip("ruff not installed")
    paths = ["faiss_proxy", "server", "admin", "tests", "bench", "examples"]
    check = subprocess.run(["ruff", "check", *paths], cwd=ROOT, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    fmt = subprocess.run(["ruff", "format", "--check", *paths], cwd=ROOT, capture_output=True, text=True)
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr


def test_mypy() -> None:
    pytest.importorskip("mypy")
    run = subprocess.run(
        [sys.executable, "-m", "mypy", "faiss_proxy", "server", "admin"], cwd=ROOT, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_no_secret_literals() -> None:
    pattern = re.compile(r"(password|secret|api_key)\s*=\s*['\"][^'\"]{6,}['\"]", re.I)
    for path in [*ROOT.glob("faiss_proxy/*.py"), *ROOT.glob("server/*.py")]:
        assert not pattern.search(path.read_text()), path
