"""Hostile inputs against a real `genforge serve` process: each is refused with a 4xx in under a second, and
the worker goes on serving."""

import io
import struct
import time
import zlib

import httpx
import numpy as np
import pytest
from PIL import Image


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height, with a few bytes of pixel data: a decompression bomb's shape
    without building one (the server must refuse it from the header alone)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    pixels = chunk(b"IDAT", zlib.compress(b"\0" * 4096))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + pixels + chunk(b"IEND", b"")


def small_png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((28, 28), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def hostile_requests(clf: str, gan: str) -> list[tuple[str, str, dict, str]]:
    """(what, path, request, a fragment of the message that names the check meant to refuse it)."""
    classify, generate = f"/v1/models/{clf}/classify", f"/v1/models/{gan}/generate"
    as_json = {"content-type": "application/json"}
    return [
        ("20000x20000 PNG", classify, {"files": {"file": ("bomb.png", png_header_only(20000, 20000), "image/png")}},
         "too large"),
        ("5000x5000 PNG (over genforge's limit, under Pillow's)", classify,
         {"files": {"file": ("big.png", png_header_only(5000, 5000), "image/png")}}, "5000x5000 is too large"),
        ("truncated PNG", classify, {"files": {"file": ("cut.png", small_png()[:40], "image/png")}},
         "not a readable PNG or JPEG"),
        ("random bytes", classify, {"files": {"file": ("noise.png", np.random.default_rng(0).bytes(5000),
                                                       "image/png")}}, "not a readable PNG or JPEG"),
        ("random bytes as JSON", classify, {"content": np.random.default_rng(1).bytes(5000), "headers": as_json},
         "Invalid JSON"),
        ("10 MB body", classify, {"content": b"[" + b"0," * 5_000_000 + b"0]", "headers": as_json},
         "larger than 1,048,576 bytes"),
        ("NaN in JSON", classify, {"content": b'{"inputs": [[NaN' + b", 0" * 783 + b"]]}", "headers": as_json},
         "finite"),
        ("wrong shape", classify, {"json": {"inputs": [[[1, 2], [3, 4]]]}}, "must have 784 values"),
        ("n = 10^6", generate, {"json": {"n": 10**6}}, "less than or equal to 256"),
        ("no body", generate, {"content": b"", "headers": as_json}, "Field required"),
    ]


@pytest.fixture(scope="module")
def names(served):
    by_task = {m.task: name for name, m in served.items()}
    return by_task["classify"], by_task["gan"]


def test_hostile_inputs_get_a_fast_4xx_and_the_server_keeps_serving(live_server, names):
    clf, gan = names
    with httpx.Client(base_url=live_server, timeout=10) as http:
        for what, path, kwargs, message in hostile_requests(clf, gan):
            t0 = time.perf_counter()
            r = http.post(path, **kwargs)
            elapsed = time.perf_counter() - t0
            assert 400 <= r.status_code < 500, (what, r.status_code, r.text)
            assert message in r.json()["error"]["message"], (what, r.text)
            assert elapsed < 1.0, (what, elapsed)
            ok = http.post(f"/v1/models/{clf}/classify", json={"inputs": [[0] * 784]})
            assert ok.status_code == 200, (what, ok.text)
        assert http.get("/readyz").status_code == 200
