"""The OpenAPI 3.1 description of the REST API, served at ``GET /v1/openapi.json``.

It is kept next to the handlers (:mod:`.app` routes, :mod:`.rest` operations) and
built from the same constants (index name pattern, index classes, id and metadata
limits, the operations a read-only key may not call), so the two change together;
a test checks that every route of the application is described here.

The document is plain dicts built by small helpers; :func:`openapi_spec` builds a
fresh one on each call and does no I/O.
"""

from __future__ import annotations

from typing import Any

from .config import Settings
from .metadata import MAX_ID_LENGTH, MAX_METADATA_BYTES
from .named import CLASS_FACTORIES, INDEX_NAME, MAX_DIMENSION
from .rest import EXACT_FILTER_MAX, MUTATING_OPERATIONS, RestLimits

__all__ = ["openapi_spec"]

Json = dict[str, Any]

_DEFAULTS = Settings()
_LIMITS = RestLimits()
_PARAM_MAX = 1 << 20  # largest value of an index or search parameter

_SCORE = (
    "The value FAISS returns for the index's metric: the *squared* L2 distance for `L2` indexes "
    "(smaller is closer) and the inner product for `IP` indexes (larger is closer; with normalized "
    "vectors, the cosine similarity)."
)

_FILTER = f"""A metadata filter (a JSON object); a vector matches when every key of the object holds.

| Filter | Meaning |
|---|---|
| `{{"genre": "jazz"}}` | equality (`$eq`); a list value matches each of its elements |
| `{{"genre": {{"$in": ["jazz", "soul"]}}}}` | membership; `$nin` is its negation |
| `{{"genre": {{"$ne": "pop"}}}}` | not equal (also matches vectors without the field) |
| `{{"year": {{"$gte": 1990, "$lt": 2000}}}}` | numeric comparisons `$gt`, `$gte`, `$lt`, `$lte` |
| `{{"$or": [{{...}}, {{...}}]}}`, `{{"$and": [...]}}` | combinations (non-empty lists of filters) |

Several operators on one field must all hold.  Equality operands are strings, numbers, booleans or
null; filters nest at most 16 levels.  The matching ids are selected first and FAISS searches only
those; when at most {EXACT_FILTER_MAX} vectors match, or the approximate search found fewer than
`k` of them, the matching vectors are ranked exactly, so `k` results come back whenever `k` vectors
match."""

_ERROR_CODES = [
    "bad_request",
    "faiss_error",
    "unauthorized",
    "forbidden",
    "not_found",
    "conflict",
    "payload_too_large",
    "unavailable",
    "out_of_memory",
    "storage_error",
    "internal",
    "http_error",
]

#: status -> (component name, description, example code, example message)
_ERRORS: dict[str, tuple[str, str, str, str]] = {
    "400": (
        "BadRequest",
        "Invalid input (`bad_request`), or FAISS refused the operation (`faiss_error`, with FAISS's message).",
        "bad_request",
        "'k' must be an integer from 1 to 1024",
    ),
    "401": (
        "Unauthorized",
        "The API key is missing, malformed, expired or revoked (`unauthorized`).",
        "unauthorized",
        "missing API key: send 'Authorization: Bearer <key>'",
    ),
    "403": (
        "Forbidden",
        "The tenant is suspended, or a read-only key called an operation that changes data (`forbidden`).",
        "forbidden",
        "this API key is read-only; 'upsert' changes data",
    ),
    "404": (
        "NotFound",
        "No such index, vector or endpoint (`not_found`).",
        "not_found",
        "no named index 'docs'",
    ),
    "409": (
        "Conflict",
        "The request conflicts with the stored state (`conflict`).",
        "conflict",
        "a named index 'docs' already exists",
    ),
    "413": (
        "PayloadTooLarge",
        f"The body is over `max_body_mb` (default {_DEFAULTS.max_body_mb} MiB), or it holds more than "
        f"`max_batch` (default {_DEFAULTS.max_batch}) vectors or queries (`payload_too_large`).",
        "payload_too_large",
        f"at most {_DEFAULTS.max_batch} vectors per request",
    ),
    "500": (
        "InternalError",
        "An unexpected server error (`internal`); the message says no more, the server log has the detail.",
        "internal",
        "internal server error",
    ),
    "503": (
        "Unavailable",
        "The tenant's worker is not available (starting failed, or it stopped); retry (`unavailable`).",
        "unavailable",
        "the tenant's worker stopped; retry the request",
    ),
    "507": (
        "InsufficientStorage",
        "The tenant's worker reached its memory limit (`out_of_memory`), or the data dir cannot take the "
        "change (disk full, read-only) or the index's stored data cannot be read (`storage_error`); nothing "
        "was applied.",
        "out_of_memory",
        "the tenant's memory limit was reached; the request was not applied",
    ),
}

_READ = ("401", "403", "500", "503", "507")  # every authenticated operation that reaches the worker
_ON_INDEX = ("400", "404", *_READ)  # ... on one named index


# --- schema helpers ------------------------------------------------------------------------
def _ref(name: str) -> Json:
    return {"$ref": f"#/components/schemas/{name}"}


def _obj(
    properties: Json,
    required: list[str] | None = None,
    description: str | None = None,
    closed: bool = False,
    **extra: Any,
) -> Json:
    """An object schema; ``closed`` objects refuse unknown fields, as the server does for requests."""
    schema: Json = {"type": "object", "properties": properties}
    if required:
        schema["required"] = required
    if description:
        schema["description"] = description
    if closed:
        schema["additionalProperties"] = False
    schema.update(extra)
    return schema


def _array(items: Json, description: str | None = None, **extra: Any) -> Json:
    schema: Json = {"type": "array", "items": items}
    if description:
        schema["description"] = description
    schema.update(extra)
    return schema


def _int(description: str, minimum: int | None = 0, **extra: Any) -> Json:
    schema: Json = {"type": "integer", "description": description}
    if minimum is not None:
        schema["minimum"] = minimum
    schema.update(extra)
    return schema


def _str(description: str, **extra: Any) -> Json:
    return {"type": "string", "description": description, **extra}


def _json(schema: Json, example: Any = None) -> Json:
    media: Json = {"schema": schema}
    if example is not None:
        media["example"] = example
    return {"application/json": media}


# --- operation helpers ---------------------------------------------------------------------
def _body(schema_name: str, description: str, example: Any = None, required: bool = True) -> Json:
    return {"description": description, "required": required, "content": _json(_ref(schema_name), example)}


def _ok(schema: Json, description: str, status: str = "200", example: Any = None) -> Json:
    return {status: {"description": description, "content": _json(schema, example)}}


def _errors(statuses: tuple[str, ...], notes: dict[str, str] | None = None) -> Json:
    """References to the shared error responses, with an operation's own descriptions."""
    out: Json = {}
    for status in sorted(set(statuses)):
        ref: Json = {"$ref": f"#/components/responses/{_ERRORS[status][0]}"}
        if notes and status in notes:
            ref["description"] = notes[status]
        out[status] = ref
    return out


def _operation(
    operation_id: str,
    tag: str,
    summary: str,
    description: str,
    responses: Json,
    errors: tuple[str, ...] = (),
    notes: dict[str, str] | None = None,
    request_body: Json | None = None,
    parameters: list[Json] | None = None,
    public: bool = False,
) -> Json:
    notes = {
        "403": "The tenant is suspended, or the API key is read-only (this operation changes data)."
        if operation_id in MUTATING_OPERATIONS
        else "The tenant is suspended (`forbidden`).",
        **(notes or {}),
    }
    op: Json = {
        "operationId": operation_id,
        "tags": [tag],
        "summary": summary,
        "description": description,
    }
    if parameters:
        op["parameters"] = parameters
    if request_body is not None:
        op["requestBody"] = request_body
    op["responses"] = {**responses, **_errors(errors, notes)}
    if public:
        op["security"] = []
    return op


def _path_param(name: str) -> Json:
    return {"$ref": f"#/components/parameters/{name}"}


def _query(name: str, schema: Json, description: str, **extra: Any) -> Json:
    return {"name": name, "in": "query", "description": description, "schema": schema, **extra}


# --- components ------------------------------------------------------------------------------
def _schemas() -> Json:
    classes = ", ".join(f"`{name}` (`{template}`)" for name, (template, _) in CLASS_FACTORIES.items())
    vector = _array(
        {"type": "number"},
        "One vector: exactly `dimension` finite numbers.",
        minItems=1,
        examples=[[0.1, 0.2, 0.3, 0.4]],
    )
    values_b64 = _str(
        "The vector(s) as base64 of little-endian float32 values, `dimension` floats per vector "
        "(a compact alternative to JSON numbers).",
        contentEncoding="base64",
    )
    vector_list = _array(
        _ref("Vector"),
        f"A non-empty list of vectors, each of `dimension` values; at most `max_batch` "
        f"(default {_DEFAULTS.max_batch}).",
        minItems=1,
    )
    include = _array(
        {"type": "string", "enum": ["metadata", "values"]},
        'What each hit carries besides `id` and `score` (default `["metadata"]`; `[]` for neither). '
        'A comma-separated string (`"metadata,values"`) is accepted too.',
        uniqueItems=True,
        default=["metadata"],
    )
    k = _int(
        f"Results per query, from 1 to the server's `max_k` (default {_DEFAULTS.max_k}).",
        minimum=1,
        default=10,
    )
    search_params = _obj(
        {
            "nprobe": _int("IVF indexes: inverted lists probed per query.", 1, maximum=_PARAM_MAX),
            "efSearch": _int("HNSW indexes: size of the search's candidate list.", 1, maximum=_PARAM_MAX),
        },
        description="Search parameters for this request only; a parameter that does not apply to the index "
        "type is a 400. Without them the index's own settings are used.",
        closed=True,
        examples=[{"nprobe": 16}, {"efSearch": 64}],
    )
    one_query = [{"required": ["vector"]}, {"required": ["vectors"]}]
    query_props: Json = {
        "vector": {**_ref("Vector"), "description": "One query; the response's `results` is a list of hits."},
        "vectors": {
            **_ref("VectorList"),
            "description": "Several queries; the response's `results` is a list of hit lists, one per query.",
        },
    }
    search_props: Json = {
        **query_props,
        "k": _ref("K"),
        "filter": _ref("Filter"),
        "params": _ref("SearchParams"),
        "include": _ref("Include"),
    }
    hit = _obj(
        {
            "id": _str("The vector's id."),
            "score": {"type": "number", "description": _SCORE},
            "metadata": {**_ref("Metadata"), "description": "With `include` `metadata` (the default)."},
            "values": {**_ref("Vector"), "description": "With `include` `values`."},
        },
        ["id", "score"],
        "One result, best first within its list.",
    )
    hits = _array(_ref("Hit"), "The hits of one query, best first (fewer than `k` when fewer vectors match).")
    range_result = _obj(
        {
            "results": _array(_ref("Hit"), "The hits within the radius, best first."),
            "truncated": {
                "type": "boolean",
                "description": f"More than {_LIMITS.max_range_results} vectors were within the radius; "
                "only the best of them are listed.",
            },
        },
        ["results", "truncated"],
        "The result of one range query.",
    )
    return {
        "Error": _obj(
            {
                "error": _obj(
                    {
                        "code": _str("A stable, machine-readable error code.", examples=_ERROR_CODES),
                        "message": _str("A human-readable explanation."),
                    },
                    ["code", "message"],
                )
            },
            ["error"],
            "Every error has this shape.",
        ),
        "Health": _obj(
            {
                "status": _str("Always `ok` when the server answers.", examples=["ok"]),
                "version": _str("The server's version."),
                "uptime_s": {"type": "number", "description": "Seconds since the server started."},
                "workers": _int("Tenant worker processes running."),
            },
            ["status", "version", "uptime_s", "workers"],
        ),
        "Ready": _obj(
            {
                "status": _str("`ready` or `not ready`.", examples=["ready"]),
                "version": _str("The server's version."),
                "uptime_s": {"type": "number", "description": "Seconds since the server started."},
                "workers": _int("Tenant worker processes running."),
                "checks": _obj(
                    {
                        "data_dir": _str("`ok`, or why the data dir does not take writes."),
                        "catalog": _str("`ok`, or the catalog's error."),
                        "supervisor": _str("`ok` while the worker supervisor runs."),
                    },
                    ["data_dir", "catalog", "supervisor"],
                ),
            },
            ["status", "version", "uptime_s", "workers", "checks"],
        ),
        "IndexName": _str(
            "1-128 letters, digits, `.`, `_` or `-`, starting with a letter or digit.",
            pattern=INDEX_NAME.pattern,
            examples=["docs"],
        ),
        "VectorId": _str(
            f"A vector id: a non-empty string of at most {MAX_ID_LENGTH} characters. A canonical non-negative "
            'decimal string (`"42"`) is the FAISS id itself (ids added from Python with `add_with_ids` '
            "appear as such strings); any other string is hashed to a FAISS id.",
            minLength=1,
            maxLength=MAX_ID_LENGTH,
        ),
        "Vector": vector,
        "VectorList": vector_list,
        "ValuesB64": values_b64,
        "Metadata": {
            "type": ["object", "null"],
            "description": "A JSON object stored with a vector and used by filters (field names may not start "
            f"with `$`; at most {MAX_METADATA_BYTES} bytes of JSON). A list value matches each of its elements "
            "in filters.",
            "additionalProperties": True,
            "propertyNames": {"pattern": "^[^$]"},
            "examples": [{"genre": "jazz", "year": 1959, "tags": ["modal", "trumpet"]}],
        },
        "Filter": {
            "type": "object",
            "description": _FILTER,
            "additionalProperties": True,
            "examples": [
                {"genre": "jazz"},
                {"year": {"$gte": 1990, "$lt": 2000}},
                {"$or": [{"genre": {"$in": ["jazz", "soul"]}}, {"rating": {"$gt": 4}}]},
            ],
        },
        "Include": include,
        "K": k,
        "SearchParams": search_params,
        "CreateIndexRequest": _obj(
            {
                "name": _ref("IndexName"),
                "dimension": _int("Vector dimension.", 1, maximum=MAX_DIMENSION),
                "index_type": _str(
                    'A FAISS class name or any `index_factory` string (`"IVF256,PQ16"`, `"HNSW32"`). '
                    f"Class names and the factory string each stands for: {classes}. "
                    "`IndexFlatL2` and `IndexFlatIP` fix the metric. An index type without ids of its own is "
                    "wrapped in `IDMap2`.",
                    default="IndexFlatL2",
                    examples=["IndexFlatL2", "IndexHNSWFlat", "IndexIVFPQ", "IVF1024,SQ8"],
                ),
                "metric": _str(
                    "`L2` (squared Euclidean distance) or `IP` (inner product).",
                    enum=["L2", "IP"],
                    default="L2",
                ),
                "params": _obj(
                    {
                        "nlist": _int("IVF lists (default 100).", 1, maximum=_PARAM_MAX),
                        "M": _int("HNSW neighbors per node (default 32).", 1, maximum=_PARAM_MAX),
                        "m": _int(
                            "PQ sub-quantizers (default: the largest of 64, 32, ..., 1 that divides the dimension "
                            "into parts of at least 2).",
                            1,
                            maximum=_PARAM_MAX,
                        ),
                        "nbits": _int("Bits per PQ code (default 8).", 1, maximum=_PARAM_MAX),
                    },
                    description="Values for the class name's factory template; not used with a factory string.",
                    closed=True,
                ),
            },
            ["name", "dimension"],
            closed=True,
        ),
        "IndexInfo": _obj(
            {
                "name": _ref("IndexName"),
                "dimension": _int("Vector dimension.", 1),
                "index_type": _str("The `index_type` it was created with."),
                "factory": _str("The `index_factory` string it was built from."),
                "metric": _str("`L2` or `IP`.", enum=["L2", "IP"]),
                "type": _str("The FAISS class of the index object (`IndexIDMap2`, `IndexIVFPQ`, ...)."),
                "ntotal": _int("Vectors stored."),
                "is_trained": {
                    "type": "boolean",
                    "description": "False until an index that needs training is trained.",
                },
                "size_bytes": _int("Bytes the index occupies on disk (snapshot and write-ahead log)."),
                "wal_bytes": _int("Bytes of write-ahead log since the last snapshot."),
            },
            [
                "name",
                "dimension",
                "index_type",
                "factory",
                "metric",
                "type",
                "ntotal",
                "is_trained",
                "size_bytes",
                "wal_bytes",
            ],
        ),
        "DamagedIndex": _obj(
            {
                "name": _ref("IndexName"),
                "error": _str("Why the index cannot be loaded (its stored data is damaged or unreadable)."),
            },
            ["name", "error"],
            description="A named index whose data cannot be loaded; it can still be dropped.",
        ),
        "IndexList": _obj(
            {
                "indexes": _array(
                    {"anyOf": [_ref("IndexInfo"), _ref("DamagedIndex")]},
                    "The tenant's named indexes, by name; one whose data cannot be loaded is listed with its error.",
                )
            },
            ["indexes"],
        ),
        "UpsertItem": _obj(
            {
                "id": _ref("VectorId"),
                "values": _ref("Vector"),
                "values_b64": _ref("ValuesB64"),
                "metadata": _ref("Metadata"),
            },
            ["id"],
            "One vector to add or replace: `values` or `values_b64` (one vector's worth), not both.",
            closed=True,
            oneOf=[{"required": ["values"]}, {"required": ["values_b64"]}],
        ),
        "UpsertRequest": _obj(
            {
                "vectors": _array(
                    _ref("UpsertItem"),
                    f"Vectors to add or replace (at most `max_batch`, default {_DEFAULTS.max_batch}). "
                    "A stored vector with the same id is replaced, metadata included; when an id occurs "
                    "twice, its last occurrence wins.",
                    minItems=1,
                )
            },
            ["vectors"],
            closed=True,
        ),
        "TrainRequest": _obj(
            {"vectors": _ref("VectorList"), "values_b64": _ref("ValuesB64")},
            description="Training vectors, as JSON (`vectors`) or base64 (`values_b64`, used when both are given).",
            closed=True,
            anyOf=[{"required": ["vectors"]}, {"required": ["values_b64"]}],
        ),
        "SearchRequest": _obj(
            search_props,
            description="Give `vector` (one query) or `vectors` (several), not both.",
            closed=True,
            oneOf=one_query,
        ),
        "RangeSearchRequest": _obj(
            {
                "operation": {"const": "range_search"},
                **query_props,
                "radius": {
                    "type": "number",
                    "description": "L2 indexes: every vector with a squared distance below `radius`; IP indexes: "
                    "every vector with an inner product above it.",
                },
                "filter": _ref("Filter"),
                "include": _ref("Include"),
            },
            ["operation", "radius"],
            "All vectors within `radius` of each query, best first.",
            closed=True,
            oneOf=one_query,
        ),
        "SearchAndReconstructRequest": _obj(
            {"operation": {"const": "search_and_reconstruct"}, **search_props},
            ["operation"],
            "A search whose hits always carry `values`.",
            closed=True,
            oneOf=one_query,
        ),
        "ReconstructRequest": _obj(
            {"operation": {"const": "reconstruct"}, "id": _ref("VectorId")},
            ["operation", "id"],
            "The stored values of one vector.",
            closed=True,
        ),
        "SpecializedSearchRequest": {
            "oneOf": [_ref("RangeSearchRequest"), _ref("SearchAndReconstructRequest"), _ref("ReconstructRequest")],
            "discriminator": {
                "propertyName": "operation",
                "mapping": {
                    "range_search": "#/components/schemas/RangeSearchRequest",
                    "search_and_reconstruct": "#/components/schemas/SearchAndReconstructRequest",
                    "reconstruct": "#/components/schemas/ReconstructRequest",
                },
            },
        },
        "Hit": hit,
        "Hits": hits,
        "SearchResponse": _obj(
            {
                "results": {
                    "anyOf": [_ref("Hits"), _array(_ref("Hits"), "One hit list per query, in query order.")],
                    "description": "For `vector`: the hits; for `vectors`: one hit list per query.",
                }
            },
            ["results"],
        ),
        "RangeResult": range_result,
        "RangeSearchResponse": _obj(
            {
                "results": {
                    "anyOf": [_ref("RangeResult"), _array(_ref("RangeResult"), "One result per query.")],
                    "description": "For `vector`: one range result; for `vectors`: one per query.",
                }
            },
            ["results"],
        ),
        "StoredVector": _obj(
            {"id": _ref("VectorId"), "values": _ref("Vector"), "metadata": _ref("Metadata")},
            ["id", "values", "metadata"],
        ),
        "ReconstructResponse": _obj({"id": _ref("VectorId"), "values": _ref("Vector")}, ["id", "values"]),
        "Ntotal": _obj({"ntotal": _int("Vectors stored.")}, ["ntotal"]),
    }


def _responses() -> Json:
    out: Json = {}
    for name, description, code, message in _ERRORS.values():
        response: Json = {
            "description": description,
            "content": _json(_ref("Error"), {"error": {"code": code, "message": message}}),
        }
        if name == "Unauthorized":
            response["headers"] = {
                "WWW-Authenticate": {
                    "description": '`Bearer realm="faiss-proxy"`',
                    "schema": {"type": "string"},
                }
            }
        out[name] = response
    return out


def _components() -> Json:
    return {
        "schemas": _schemas(),
        "responses": _responses(),
        "parameters": {
            "index": {
                "name": "index",
                "in": "path",
                "required": True,
                "description": "The named index.",
                "schema": _ref("IndexName"),
            },
            "vector_id": {
                "name": "vector_id",
                "in": "path",
                "required": True,
                "description": "The vector's id (URL-encoded).",
                "schema": _ref("VectorId"),
            },
        },
        "securitySchemes": {
            "bearerAuth": {
                "type": "http",
                "scheme": "bearer",
                "description": "`Authorization: Bearer <key>` with a tenant's API key (`faiss-proxy key create`).",
            },
            "apiKeyHeader": {
                "type": "apiKey",
                "in": "header",
                "name": "X-API-Key",
                "description": "The same API key in `X-API-Key`; used only when no `Authorization` header is sent.",
            },
        },
    }


# --- paths -------------------------------------------------------------------------------------
def _service_paths() -> Json:
    return {
        "/v1/health": {
            "get": _operation(
                "health",
                "service",
                "Liveness",
                "Answers while the gateway runs; no authentication.",
                _ok(_ref("Health"), "The server is up."),
                public=True,
            )
        },
        "/v1/ready": {
            "get": _operation(
                "ready",
                "service",
                "Readiness",
                "200 when the data dir takes writes, the catalog answers and the worker supervisor runs; "
                "503 (same body, `status: not ready`) otherwise. No authentication.",
                {
                    "200": {
                        "description": "Ready.",
                        "content": {"application/json": {"schema": _ref("Ready")}},
                    },
                    "503": {
                        "description": "Not ready; `checks` says why.",
                        "content": {"application/json": {"schema": _ref("Ready")}},
                    },
                },
                public=True,
            )
        },
        "/v1/metrics": {
            "get": _operation(
                "metrics",
                "service",
                "Prometheus metrics",
                "Prometheus text exposition format: `faiss_proxy_requests_total`, `faiss_proxy_request_errors_total` "
                "and `faiss_proxy_request_duration_seconds` per tenant, api (rpc/rest) and operation; "
                "`faiss_proxy_rpc_sessions`, `faiss_proxy_workers`, `faiss_proxy_worker_restarts_total`, "
                "`faiss_proxy_worker_rss_bytes`, `faiss_proxy_named_indexes`, `faiss_proxy_vectors`, "
                "`faiss_proxy_wal_bytes`. With the `metrics_token` setting, send `Authorization: Bearer <token>`.",
                {
                    "200": {
                        "description": "Metrics, `text/plain; version=0.0.4`.",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
                ("401", "403"),
            )
        },
        "/v1/openapi.json": {
            "get": _operation(
                "openapi",
                "service",
                "This document",
                "The OpenAPI 3.1 description of the REST API; no authentication.",
                _ok({"type": "object"}, "The OpenAPI document."),
                public=True,
            )
        },
        "/v1/rpc": {
            "get": _operation(
                "rpc",
                "service",
                "RPC session upgrade",
                "Upgrades the connection to a faiss-proxy RPC session (the Python client's transport, not a REST "
                "call). A bad key is refused with 401 before any RPC byte is read.",
                {
                    "101": {
                        "description": "Switching Protocols; the connection now carries the RPC session.",
                    }
                },
                ("400", "401", "403", "503"),
                {"400": "The request lacks `Connection: Upgrade` and `Upgrade: faiss-proxy-rpc`."},
                parameters=[
                    {"name": "Connection", "in": "header", "required": True, "schema": {"const": "Upgrade"}},
                    {"name": "Upgrade", "in": "header", "required": True, "schema": {"const": "faiss-proxy-rpc"}},
                ],
            )
        },
    }


def _index_paths() -> Json:
    index = [_path_param("index")]
    not_trained = "The index is not trained: `POST /v1/index/{index}/train` first (`conflict`)."
    return {
        "/v1/index": {
            "get": _operation(
                "list",
                "indexes",
                "List indexes",
                "The tenant's named indexes.",
                _ok(_ref("IndexList"), "The indexes, by name."),
                _READ,
            ),
            "post": _operation(
                "create",
                "indexes",
                "Create an index",
                "Creates a durable named index, shared by every client of the tenant (REST and Python).",
                _ok(_ref("IndexInfo"), "The new index.", "201"),
                ("400", "409", "413", *_READ),
                {"409": "An index of that name exists (`conflict`)."},
                request_body=_body(
                    "CreateIndexRequest",
                    "The index to create.",
                    {"name": "docs", "dimension": 384, "index_type": "IndexHNSWFlat", "metric": "IP"},
                ),
            ),
        },
        "/v1/index/{index}": {
            "parameters": index,
            "get": _operation(
                "info",
                "indexes",
                "Describe an index",
                "The index's definition and size.",
                _ok(_ref("IndexInfo"), "The index."),
                _ON_INDEX,
            ),
            "delete": _operation(
                "drop",
                "indexes",
                "Drop an index",
                "Deletes the index and all its vectors.",
                _ok(_obj({"dropped": _ref("IndexName")}, ["dropped"]), "The index was dropped."),
                _ON_INDEX,
            ),
        },
        "/v1/index/{index}/train": {
            "parameters": index,
            "post": _operation(
                "train",
                "indexes",
                "Train an index",
                "Trains an index type that needs it (IVF, PQ, SQ) on representative vectors.",
                _ok(
                    _obj(
                        {"is_trained": {"type": "boolean"}, "ntotal": _int("Vectors stored.")},
                        ["is_trained", "ntotal"],
                    ),
                    "The index was trained.",
                ),
                ("413", *_ON_INDEX),
                request_body=_body("TrainRequest", "Training vectors."),
            ),
        },
        "/v1/index/{index}/ntotal": {
            "parameters": index,
            "get": _operation(
                "ntotal",
                "indexes",
                "Count vectors",
                "The number of vectors stored.",
                _ok(_ref("Ntotal"), "The count."),
                _ON_INDEX,
            ),
        },
        "/v1/index/{index}/reset": {
            "parameters": index,
            "post": _operation(
                "reset",
                "indexes",
                "Remove all vectors",
                "Removes every vector and its metadata; the index stays (trained, if it was).",
                _ok(_obj({"ntotal": {"const": 0}}, ["ntotal"]), "The index is empty."),
                _ON_INDEX,
            ),
        },
        "/v1/index/{index}/vectors": {
            "parameters": index,
            "post": _operation(
                "upsert",
                "vectors",
                "Add or replace vectors",
                "Adds vectors with their ids and metadata, replacing stored vectors with the same ids. The change "
                "is on disk (write-ahead log) before the response.",
                _ok(
                    _obj(
                        {
                            "upserted": _int("Vectors written (distinct ids)."),
                            "ntotal": _int("Vectors stored afterwards."),
                        },
                        ["upserted", "ntotal"],
                    ),
                    "The vectors were stored.",
                ),
                ("409", "413", *_ON_INDEX),
                {"409": "The index is not trained, or an id's hash collides with another stored id (`conflict`)."},
                request_body=_body(
                    "UpsertRequest",
                    "The vectors.",
                    {"vectors": [{"id": "doc-1", "values": [0.1, 0.2, 0.3, 0.4], "metadata": {"genre": "jazz"}}]},
                ),
            ),
        },
        "/v1/index/{index}/vectors/{vector_id}": {
            "parameters": [*index, _path_param("vector_id")],
            "get": _operation(
                "get_vector",
                "vectors",
                "Fetch a vector",
                "The stored values and metadata of one vector.",
                _ok(_ref("StoredVector"), "The vector."),
                _ON_INDEX,
                {"400": "Invalid input, or this index type cannot return stored vectors."},
            ),
            "delete": _operation(
                "delete_vector",
                "vectors",
                "Delete a vector",
                "Removes one vector and its metadata.",
                _ok(
                    _obj(
                        {"deleted": _ref("VectorId"), "ntotal": _int("Vectors stored afterwards.")},
                        ["deleted", "ntotal"],
                    ),
                    "The vector was deleted.",
                ),
                _ON_INDEX,
            ),
        },
        "/v1/index/{index}/search": {
            "parameters": index,
            "post": _operation(
                "search",
                "search",
                "k-nearest-neighbor search",
                "The `k` nearest vectors to each query, optionally among those whose metadata matches `filter`. "
                + _SCORE,
                _ok(_ref("SearchResponse"), "`{results: [Hit]}` for `vector`, `{results: [[Hit]]}` for `vectors`."),
                ("409", "413", *_ON_INDEX),
                {"409": not_trained},
                request_body=_body(
                    "SearchRequest",
                    "The query or queries.",
                    {"vector": [0.1, 0.2, 0.3, 0.4], "k": 5, "filter": {"genre": "jazz"}},
                ),
            ),
            "get": _operation(
                "search_get",
                "search",
                "k-nearest-neighbor search (query string)",
                "The search for one query given in the query string. " + _SCORE,
                _ok(_ref("SearchResponse"), "`{results: [Hit]}`."),
                ("409", *_ON_INDEX),
                {"409": not_trained},
                parameters=[
                    _query(
                        "vector",
                        _array({"type": "number"}, minItems=1),
                        "The query, comma-separated numbers (`0.1,0.2,0.3`).",
                        required=True,
                        style="form",
                        explode=False,
                    ),
                    _query("k", _ref("K"), "Results per query (default 10)."),
                    {
                        "name": "filter",
                        "in": "query",
                        "description": "A metadata filter as JSON (URL-encoded).",
                        "content": _json(_ref("Filter")),
                    },
                    _query("nprobe", _int("", 1, maximum=_PARAM_MAX), "IVF indexes: lists probed."),
                    _query("efSearch", _int("", 1, maximum=_PARAM_MAX), "HNSW indexes: candidate list size."),
                    _query(
                        "include",
                        _array({"type": "string", "enum": ["metadata", "values"]}),
                        "Comma-separated: `metadata`, `values` (default `metadata`).",
                        style="form",
                        explode=False,
                    ),
                ],
            ),
        },
        "/v1/index/{index}/specialized_search": {
            "parameters": index,
            "post": _operation(
                "specialized_search",
                "search",
                "Range search, search with values, reconstruct",
                "`operation` picks one of: `range_search` (every vector within `radius`; "
                f"at most {_LIMITS.max_range_results} hits per query), `search_and_reconstruct` (a search whose "
                "hits carry `values`), `reconstruct` (the stored values of one id). " + _SCORE,
                _ok(
                    {
                        "anyOf": [_ref("RangeSearchResponse"), _ref("SearchResponse"), _ref("ReconstructResponse")],
                    },
                    "`range_search`: `{results: RangeResult}` (a list of them for `vectors`); "
                    "`search_and_reconstruct`: as search; `reconstruct`: `{id, values}`.",
                ),
                ("409", "413", *_ON_INDEX),
                {"409": not_trained},
                request_body=_body(
                    "SpecializedSearchRequest",
                    "The operation and its arguments.",
                    {"operation": "range_search", "vector": [0.1, 0.2, 0.3, 0.4], "radius": 0.5},
                ),
            ),
        },
    }


def openapi_spec(version: str) -> dict[str, Any]:
    """The OpenAPI 3.1.0 document of the REST API, for server version ``version``."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "faiss-proxy REST API",
            "version": version,
            "description": "Durable, shared FAISS indexes per tenant. Every endpoint except `/v1/health` and "
            "`/v1/openapi.json` needs a tenant API key; read-only keys may not change data. Every error is "
            '`{"error": {"code": ..., "message": ...}}`.',
            "license": {"name": "MIT", "identifier": "MIT"},
        },
        "servers": [{"url": "/"}],
        "security": [{"bearerAuth": []}, {"apiKeyHeader": []}],
        "tags": [
            {"name": "service", "description": "Health, metrics, this document."},
            {"name": "indexes", "description": "Named indexes."},
            {"name": "vectors", "description": "Vectors with ids and metadata."},
            {"name": "search", "description": "Searches."},
        ],
        "paths": {**_service_paths(), **_index_paths()},
        "components": _components(),
    }
