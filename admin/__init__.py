"""faiss-proxy admin web page (tenants, API keys, usage).

Installed as ``faiss_proxy_admin``.  The page itself arrives with the admin issue;
until then the same operations are available from the ``faiss-proxy tenant`` and
``faiss-proxy key`` commands.
"""
