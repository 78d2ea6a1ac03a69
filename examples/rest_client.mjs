// The REST API from Node.js (18 or later), with nothing but the built-in fetch:
// create a named index, upsert vectors with metadata, search with and without a
// metadata filter, delete a vector, drop the index.
//
//   faiss-proxy serve &
//   faiss-proxy tenant create demo
//   export FAISS_PROXY_URL=http://127.0.0.1:8000
//   export FAISS_PROXY_API_KEY=$(faiss-proxy key create demo | tail -1)
//   node examples/rest_client.mjs
//
// The full reference is docs/rest-reference.md (generated from GET /v1/openapi.json).

const url = process.env.FAISS_PROXY_URL;
const key = process.env.FAISS_PROXY_API_KEY;
if (!url || !key) {
  console.error(
    "Set FAISS_PROXY_URL (e.g. http://127.0.0.1:8000) and FAISS_PROXY_API_KEY " +
      "(faiss-proxy key create TENANT | tail -1) first.",
  );
  process.exit(2);
}
const base = url.replace(/\/+$/, "") + "/v1";
const index = process.env.INDEX || "node-demo";

class ApiError extends Error {
  constructor(status, body) {
    super(`HTTP ${status}: ${body?.error?.code}: ${body?.error?.message}`);
    this.status = status;
    this.body = body;
  }
}

/** One REST call: JSON in, JSON out; an HTTP error throws ApiError with the server's error body. */
async function api(method, path, body) {
  const response = await fetch(base + path, {
    method,
    headers: { Authorization: `Bearer ${key}`, "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const payload = await response.json();
  if (!response.ok) throw new ApiError(response.status, payload);
  return payload;
}

function show(title, hits) {
  console.log(title);
  for (const hit of hits) {
    const meta = hit.metadata ? ` ${JSON.stringify(hit.metadata)}` : "";
    console.log(`  ${hit.id.padEnd(12)} score=${hit.score.toFixed(4)}${meta}`);
  }
}

// 8-dimensional toy "embeddings": a topic direction plus a little per-item noise.
function embed(topic, seed) {
  const v = Array.from({ length: 8 }, (_, i) => (i === topic ? 1 : 0) + 0.05 * Math.sin(seed * (i + 1)));
  const norm = Math.hypot(...v);
  return v.map((x) => x / norm);
}

const articles = [
  { id: "news-1", topic: 0, metadata: { section: "sports", lang: "en", year: 2023 } },
  { id: "news-2", topic: 0, metadata: { section: "sports", lang: "de", year: 2024 } },
  { id: "news-3", topic: 1, metadata: { section: "science", lang: "en", year: 2022 } },
  { id: "news-4", topic: 1, metadata: { section: "science", lang: "en", year: 2024 } },
  { id: "news-5", topic: 2, metadata: { section: "culture", lang: "fr", year: 2021 } },
  { id: "news-6", topic: 0, metadata: { section: "sports", lang: "en", year: 2021 } },
];

// Start from a clean slate if an earlier run left the index behind.
try {
  await api("DELETE", `/index/${index}`);
} catch (err) {
  if (!(err instanceof ApiError && err.status === 404)) throw err;
}

const info = await api("POST", "/index", { name: index, dimension: 8, index_type: "IndexFlatIP", metric: "IP" });
console.log(`created ${info.name}: dimension ${info.dimension}, metric ${info.metric}, FAISS type ${info.type}`);

const upserted = await api("POST", `/index/${index}/vectors`, {
  vectors: articles.map((a, i) => ({ id: a.id, values: embed(a.topic, i + 1), metadata: a.metadata })),
});
console.log(`upserted ${upserted.upserted} vectors, ntotal ${upserted.ntotal}`);

const query = embed(0, 42); // something about sports
let { results } = await api("POST", `/index/${index}/search`, { vector: query, k: 3 });
show("nearest 3:", results);

({ results } = await api("POST", `/index/${index}/search`, {
  vector: query,
  k: 3,
  filter: { lang: "en", year: { $gte: 2022 } },
}));
show("filtered (lang en, year >= 2022):", results);

const deleted = await api("DELETE", `/index/${index}/vectors/news-1`);
console.log(`deleted ${deleted.deleted}, ntotal ${deleted.ntotal}`);

({ results } = await api("POST", `/index/${index}/search`, { vector: query, k: 3, include: [] }));
show("nearest 3 after the delete:", results);

try {
  await api("GET", `/index/${index}/vectors/news-1`);
} catch (err) {
  if (!(err instanceof ApiError)) throw err;
  console.log(`fetching news-1 now: ${err.status} ${err.body.error.code}`);
}

const dropped = await api("DELETE", `/index/${index}`);
console.log(`dropped ${dropped.dropped}`);
