"""faiss-proxy server: the gateway, tenant workers and the reflection boundary.

Installed as ``faiss_proxy_server`` (the repository keeps it in ``server/``).
"""
