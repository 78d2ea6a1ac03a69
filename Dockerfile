# faiss-proxy server image (see docs/deploy.md).
#   docker build -t faiss-proxy .
#   docker run -d -p 8000:8000 -v faiss-proxy-data:/data faiss-proxy
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# An unprivileged user owns the data volume; the server never runs as root.
RUN useradd --create-home --uid 10001 --user-group faiss-proxy \
    && mkdir /data \
    && chown faiss-proxy:faiss-proxy /data

# Only what the wheel is built from (.dockerignore keeps the build context to these).
COPY pyproject.toml README.md /src/
COPY faiss_proxy /src/faiss_proxy
COPY server /src/server
COPY admin /src/admin
RUN pip install --no-cache-dir "/src[server]" && rm -rf /src

USER faiss-proxy
WORKDIR /home/faiss-proxy
# The catalog (tenants, keys), secret.key and every tenant's named indexes live here.
ENV FAISS_PROXY_DATA_DIR=/data
VOLUME ["/data"]
EXPOSE 8000

# slim has no curl: ask /v1/health with the standard library (over HTTPS when TLS is on).
HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import os, ssl, urllib.request as u; tls = bool(os.environ.get('FAISS_PROXY_TLS_CERT')); u.urlopen(('https' if tls else 'http') + '://127.0.0.1:' + os.environ.get('FAISS_PROXY_PORT', '8000') + '/v1/health', timeout=4, context=ssl._create_unverified_context() if tls else None)"]

# Exec form: the server is PID 1 and gets SIGTERM from `docker stop` (it stops its workers and exits).
ENTRYPOINT ["faiss-proxy", "serve", "--host", "0.0.0.0"]
