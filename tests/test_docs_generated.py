"""Generated docs are up to date, and the docs' links point at files that exist."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_rest_reference", DOCS / "gen_rest_reference.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rest_reference_is_generated_from_the_served_openapi() -> None:
    generated = load_generator().generate()
    committed = (DOCS / "rest-reference.md").read_text()
    assert committed == generated, "docs/rest-reference.md is out of date: run python docs/gen_rest_reference.py"


def test_rest_reference_covers_every_operation() -> None:
    from faiss_proxy import __version__
    from faiss_proxy_server.openapi import openapi_spec

    spec = openapi_spec(__version__)
    text = (DOCS / "rest-reference.md").read_text()
    for path, item in spec["paths"].items():
        for method in ("get", "post", "delete", "put", "patch"):
            if method in item:
                assert f"### `{method.upper()} {path}`" in text
    for name in spec["components"]["schemas"]:
        assert f"### `{name}`" in text


def test_doc_links_resolve() -> None:
    pages = [ROOT / "README.md", *DOCS.glob("*.md")]
    for page in pages:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" in target or target.startswith("mailto:"):
                continue
            assert (page.parent / target).exists(), f"{page.name} links to missing {target}"
