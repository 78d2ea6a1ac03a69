"""Write docs/rest-reference.md from the server's OpenAPI description.

    python docs/gen_rest_reference.py          # rewrite docs/rest-reference.md
    python docs/gen_rest_reference.py --check  # exit 1 if the file is out of date

The source is :func:`faiss_proxy_server.openapi.openapi_spec`, the document the server
serves at ``GET /v1/openapi.json``; ``tests/test_docs_generated.py`` fails when the
committed reference differs from what this script writes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

Json = dict[str, Any]

OUTPUT = Path(__file__).resolve().parent / "rest-reference.md"
METHODS = ("get", "post", "put", "patch", "delete")


def _cell(text: Any) -> str:
    """One Markdown table cell: no newlines, no bare pipes."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _ref_name(ref: str) -> str:
    return ref.rsplit("/", 1)[-1]


def _schema_link(name: str) -> str:
    return f"[`{name}`](#{name.lower()})"


def _type(schema: Json) -> str:
    """A short human description of a schema's type."""
    if "$ref" in schema:
        return _schema_link(_ref_name(schema["$ref"]))
    if "const" in schema:
        return f"`{json.dumps(schema['const'])}`"
    if "enum" in schema:
        return "one of " + ", ".join(f"`{json.dumps(v)}`" for v in schema["enum"])
    if "type" not in schema and "oneOf" in schema:
        return " or ".join(_type(s) for s in schema["oneOf"])
    kind = schema.get("type", "any")
    if isinstance(kind, list):
        return " or ".join(kind)
    if kind == "array":
        return f"array of {_type(schema.get('items', {}))}"
    return str(kind)


def _limits(schema: Json) -> str:
    parts = []
    for key, label in (
        ("minimum", "≥"),
        ("maximum", "≤"),
        ("minItems", "items ≥"),
        ("maxItems", "items ≤"),
        ("minLength", "length ≥"),
        ("maxLength", "length ≤"),
    ):
        if key in schema:
            parts.append(f"{label} {schema[key]}")
    if "pattern" in schema:
        parts.append(f"pattern `{schema['pattern']}`")
    if "default" in schema:
        parts.append(f"default `{json.dumps(schema['default'])}`")
    return "; ".join(parts)


def _dumps(value: Any, indent: str = "") -> str:
    """JSON, indented, with lists of plain values kept on one line."""
    if isinstance(value, dict) and value:
        inner = indent + "  "
        items = [f"{inner}{json.dumps(k)}: {_dumps(v, inner)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + indent + "}"
    if isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value):
        inner = indent + "  "
        return "[\n" + ",\n".join(inner + _dumps(v, inner) for v in value) + "\n" + indent + "]"
    return json.dumps(value, ensure_ascii=False)


def _json_block(value: Any) -> list[str]:
    return ["```json", _dumps(value), "```", ""]


def _example(media: Json) -> Any:
    if "example" in media:
        return media["example"]
    examples = media.get("examples")
    if isinstance(examples, dict) and examples:
        first = next(iter(examples.values()))
        return first.get("value")
    return None


def _parameters(params: list[Json], spec: Json) -> list[str]:
    if not params:
        return []
    lines = ["| Parameter | In | Type | Required | Description |", "|---|---|---|---|---|"]
    for p in params:
        if "$ref" in p:
            p = spec["components"]["parameters"][_ref_name(p["$ref"])]
        schema = p.get("schema")
        if schema is None and "content" in p:
            media = next(iter(p["content"].values()))
            schema = media.get("schema", {})
            kind = f"JSON: {_type(schema)}"
        else:
            kind = _type(schema or {})
        extra = _limits(schema or {})
        desc = p.get("description", "") + (f" ({extra})" if extra else "")
        required = "yes" if p.get("required") else ""
        lines.append(f"| `{p['name']}` | {p['in']} | {_cell(kind)} | {required} | {_cell(desc)} |")
    return [*lines, ""]


def _responses(responses: Json, spec: Json) -> list[str]:
    lines = ["| Status | Body | Meaning |", "|---|---|---|"]
    for status, resp in responses.items():
        body = ""
        desc = resp.get("description", "")
        if "$ref" in resp:
            shared = spec["components"]["responses"][_ref_name(resp["$ref"])]
            desc = resp.get("description") or shared.get("description", "")
            resp = {**shared, **{k: v for k, v in resp.items() if k != "$ref"}}
        content = resp.get("content", {})
        if content:
            media_type, media = next(iter(content.items()))
            body = _type(media.get("schema", {})) if media_type == "application/json" else f"`{media_type}`"
        lines.append(f"| {status} | {_cell(body)} | {_cell(desc)} |")
    return [*lines, ""]


def _operation(path: str, method: str, op: Json, path_params: list[Json], spec: Json) -> list[str]:
    lines = [f"### `{method.upper()} {path}`", ""]
    lines += [f"**{op.get('summary', '')}.** {op.get('description', '')}".rstrip(), ""]
    if op.get("security") == []:
        lines += ["No API key needed.", ""]
    lines += _parameters([*path_params, *op.get("parameters", [])], spec)
    body = op.get("requestBody")
    if body:
        media = body["content"].get("application/json") or next(iter(body["content"].values()))
        required = "required" if body.get("required") else "optional"
        lines += [f"Request body ({required}, {_type(media.get('schema', {}))}): {body.get('description', '')}", ""]
        example = _example(media)
        if example is not None:
            lines += _json_block(example)
    lines += _responses(op.get("responses", {}), spec)
    for status, resp in op.get("responses", {}).items():
        media = resp.get("content", {}).get("application/json")
        if media and status.startswith("2"):
            example = _example(media)
            if example is not None:
                lines += [f"Example `{status}` answer:", "", *_json_block(example)]
    return lines


def _field_rows(schema: Json, prefix: str = "") -> list[str]:
    """Table rows for an object's fields; fields of nested objects as ``outer.inner``."""
    rows = []
    required = set(schema.get("required", []))
    for field, sub in schema.get("properties", {}).items():
        desc = sub.get("description", "")
        extra = _limits(sub)
        if extra:
            desc = f"{desc} ({extra})" if desc else extra
        examples = sub.get("examples")
        if examples and all(isinstance(e, str) for e in examples):
            desc += " Examples: " + ", ".join(f"`{e}`" for e in examples) + "."
        mark = "yes" if field in required else ""
        rows.append(f"| `{prefix}{field}` | {_cell(_type(sub))} | {mark} | {_cell(desc)} |")
        if sub.get("properties"):
            rows += _field_rows(sub, f"{prefix}{field}.")
    return rows


def _schema(name: str, schema: Json) -> list[str]:
    lines = [f"### `{name}`", ""]
    summary = _type(schema)
    limits = _limits(schema)
    lines += [f"Type: {summary}" + (f" ({limits})" if limits else "") + ".", ""]
    if schema.get("description"):
        lines += [schema["description"], ""]
    props: Json = schema.get("properties", {})
    if props:
        lines += ["| Field | Type | Required | Description |", "|---|---|---|---|"]
        lines += _field_rows(schema)
        lines.append("")
        if schema.get("additionalProperties") is False:
            lines += ["Other fields are refused (400).", ""]
    if "oneOf" in schema and props:
        alternatives = [", ".join(f"`{r}`" for r in alt.get("required", [])) for alt in schema["oneOf"]]
        lines += ["Exactly one of: " + "; ".join(a for a in alternatives if a) + ".", ""]
    if "discriminator" in schema:
        prop = schema["discriminator"]["propertyName"]
        mapping = schema["discriminator"].get("mapping", {})
        pairs = ", ".join(f"`{k}` → {_schema_link(_ref_name(v))}" for k, v in mapping.items())
        lines += [f"Chosen by `{prop}`: {pairs}.", ""]
    for example in schema.get("examples", [])[:3]:
        lines += _json_block(example)
    return lines


def render(spec: Json) -> str:
    info = spec["info"]
    out = [
        "# REST API reference",
        "",
        "<!-- Generated by docs/gen_rest_reference.py from GET /v1/openapi.json; do not edit by hand. -->",
        "",
        f"{info['title']}, version {info['version']} (OpenAPI {spec['openapi']}). {info.get('description', '')}",
        "",
        "For a tour with examples see [rest.md](rest.md); this page lists every endpoint, field and error.",
        "",
        "## Authentication",
        "",
    ]
    for name, scheme in spec["components"].get("securitySchemes", {}).items():
        out.append(f"- `{name}`: {scheme.get('description', '')}")
    out.append("")

    paths: Json = spec["paths"]
    tags = [t["name"] for t in spec.get("tags", [])]
    by_tag: dict[str, list[tuple[str, str, Json, list[Json]]]] = {t: [] for t in tags}
    for path, item in paths.items():
        for method in METHODS:
            if method in item:
                op = item[method]
                tag = (op.get("tags") or ["other"])[0]
                by_tag.setdefault(tag, []).append((path, method, op, item.get("parameters", [])))

    out += ["## Endpoints", "", "| Method and path | Summary |", "|---|---|"]
    for ops in by_tag.values():
        for path, method, op, _ in ops:
            anchor = f"{method} {path}".lower()
            anchor = "".join(c for c in anchor if c.isalnum() or c in " -_").replace(" ", "-")
            out.append(f"| [`{method.upper()} {path}`](#{anchor}) | {_cell(op.get('summary', ''))} |")
    out.append("")

    descriptions = {t["name"]: t.get("description", "") for t in spec.get("tags", [])}
    for tag, ops in by_tag.items():
        if not ops:
            continue
        out += [f"## {tag.capitalize()}", ""]
        if descriptions.get(tag):
            out += [descriptions[tag], ""]
        for path, method, op, path_params in ops:
            out += _operation(path, method, op, path_params, spec)

    out += ["## Errors", "", "Every error body is an [`Error`](#error). The shared responses:", ""]
    out += ["| Response | Description | Example |", "|---|---|---|"]
    for name, resp in spec["components"].get("responses", {}).items():
        media = resp.get("content", {}).get("application/json", {})
        example = _example(media)
        shown = f"`{json.dumps(example, ensure_ascii=False)}`" if example is not None else ""
        out.append(f"| `{name}` | {_cell(resp.get('description', ''))} | {_cell(shown)} |")
    out.append("")

    out += ["## Schemas", ""]
    for name, schema in spec["components"].get("schemas", {}).items():
        out += _schema(name, schema)
    return "\n".join(out).rstrip() + "\n"


def generate() -> str:
    from faiss_proxy import __version__
    from faiss_proxy_server.openapi import openapi_spec

    return render(openapi_spec(__version__))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed file is out of date")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    text = generate()
    if args.check:
        current = args.output.read_text() if args.output.exists() else ""
        if current != text:
            print(f"{args.output} is out of date: run python docs/gen_rest_reference.py", file=sys.stderr)
            return 1
        return 0
    args.output.write_text(text)
    print(f"wrote {args.output} ({len(text)} characters)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
