# faiss-proxy server image.  docker build -t faiss-proxy . && docker run -p 8000:8000 -v fpdata:/data faiss-proxy
FROM python:3.11-slim
RUN useradd --create-home --uid 10001 faiss-proxy && mkdir /data && chown faiss-proxy /data
WORKDIR /app
COPY pyproject.toml README.md ./
COPY faiss_proxy ./faiss_proxy
COPY server ./server
COPY admin ./admin
RUN pip install --no-cache-dir ".[server]"
USER faiss-proxy
ENV FAISS_PROXY_DATA_DIR=/data
VOLUME /data
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/v1/health', timeout=4)"
ENTRYPOINT ["faiss-proxy", "serve", "--host", "0.0.0.0"]
