"""``python -m faiss_proxy_server`` is the ``faiss-proxy`` command."""

from .entry import main

if __name__ == "__main__":
    main()
