#!/usr/bin/env bash
# The REST API from curl: create a named index, upsert vectors with metadata,
# search with and without a metadata filter, fetch and delete a vector, drop the index.
#
#   faiss-proxy serve &
#   faiss-proxy tenant create demo
#   export FAISS_PROXY_URL=http://127.0.0.1:8000
#   export FAISS_PROXY_API_KEY=$(faiss-proxy key create demo | tail -1)
#   bash examples/rest_curl.sh
#
# Only curl is needed. Every answer is JSON; errors are {"error": {"code": ..., "message": ...}}.
# The full reference is docs/rest-reference.md (generated from GET /v1/openapi.json).
set -euo pipefail

if [[ -z "${FAISS_PROXY_URL:-}" || -z "${FAISS_PROXY_API_KEY:-}" ]]; then
    echo "Set FAISS_PROXY_URL (e.g. http://127.0.0.1:8000) and FAISS_PROXY_API_KEY" \
        "(faiss-proxy key create TENANT | tail -1) first." >&2
    exit 2
fi

BASE="${FAISS_PROXY_URL%/}/v1"
INDEX="${INDEX:-curl-demo}"
AUTH="Authorization: Bearer ${FAISS_PROXY_API_KEY}"

# call METHOD PATH [JSON BODY]: print the answer; exit on an HTTP error (with its JSON error body)
call() {
    local method=$1 path=$2 body=${3:-}
    local args=(-sS -X "$method" -H "$AUTH" -w '\n%{http_code}')
    if [[ -n "$body" ]]; then
        args+=(-H "Content-Type: application/json" --data-binary "$body")
    fi
    local out status
    out=$(curl "${args[@]}" "$BASE$path")
    status=${out##*$'\n'}
    out=${out%$'\n'*}
    echo "$out"
    if [[ "$status" -ge 400 ]]; then
        echo "HTTP $status from $method $path" >&2
        exit 1
    fi
}

# Start from a clean slate if an earlier run left the index behind (404 is fine here).
curl -sS -o /dev/null -X DELETE -H "$AUTH" "$BASE/index/$INDEX"

echo "== create index $INDEX (4 dimensions, L2, flat)"
call POST /index "{\"name\": \"$INDEX\", \"dimension\": 4, \"index_type\": \"IndexFlatL2\"}"

echo "== upsert 5 vectors with metadata"
call POST "/index/$INDEX/vectors" '{"vectors": [
  {"id": "kind-of-blue",  "values": [0.90, 0.10, 0.00, 0.10], "metadata": {"genre": "jazz", "year": 1959}},
  {"id": "a-love-supreme","values": [0.80, 0.20, 0.10, 0.00], "metadata": {"genre": "jazz", "year": 1965}},
  {"id": "thriller",      "values": [0.10, 0.90, 0.20, 0.00], "metadata": {"genre": "pop",  "year": 1982}},
  {"id": "blue-train",    "values": [0.85, 0.15, 0.05, 0.05], "metadata": {"genre": "jazz", "year": 1958}},
  {"id": "purple-rain",   "values": [0.20, 0.80, 0.30, 0.10], "metadata": {"genre": "pop",  "year": 1984}}
]}'

QUERY='[0.88, 0.12, 0.02, 0.08]'

echo "== search: the 3 nearest to $QUERY"
call POST "/index/$INDEX/search" "{\"vector\": $QUERY, \"k\": 3}"

echo "== filtered search: pop records from the 1980s only"
call POST "/index/$INDEX/search" \
    "{\"vector\": $QUERY, \"k\": 3, \"filter\": {\"genre\": \"pop\", \"year\": {\"\$gte\": 1980, \"\$lt\": 1990}}}"

echo "== fetch one vector"
call GET "/index/$INDEX/vectors/thriller"

echo "== delete a vector"
call DELETE "/index/$INDEX/vectors/kind-of-blue"

echo "== search again: kind-of-blue is gone"
call POST "/index/$INDEX/search" "{\"vector\": $QUERY, \"k\": 3, \"include\": []}"

echo "== index info"
call GET "/index/$INDEX"

echo "== drop the index"
call DELETE "/index/$INDEX"
echo "done"
