import functools
import http.server
import threading

import pytest
from idx_helpers import TINY, write_tiny_idx

from genforge.data import idx_datasets
from genforge.data.idx_datasets import IdxSpec

__all__ = ["TINY"]


@pytest.fixture
def tiny_spec(monkeypatch):
    """Register TINY with the given mirrors/md5s: set_spec(mirrors, md5)."""
    def set_spec(mirrors=(), md5=None):
        spec = IdxSpec(classes=tuple(str(i) for i in range(10)), mirrors=tuple(mirrors), md5=md5 or {})
        monkeypatch.setitem(idx_datasets.IDX_DATASETS, TINY, spec)
        return spec
    return set_spec


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def http_mirror(tmp_path):
    """A local HTTP server over a folder of tiny IDX files. Yields (base_url, folder, md5s)."""
    folder = tmp_path / "mirror"
    md5 = write_tiny_idx(folder)
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", folder, md5
    server.shutdown()
    server.server_close()
