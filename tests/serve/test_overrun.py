"""No request starts work without a bound, and one that overruns its timeout anyway does not leave a server that
says it is ready while its inference thread is lost, nor one that SIGTERM cannot end."""

import math
import signal

import httpx
import pytest
import torch
from helpers import error_of, until

from genforge.models.layers import standard_normal


@pytest.mark.parametrize("truncation", [1e-30, 1e-6, 0.5, 2.0])
def test_truncated_latents_lie_within_t_with_the_truncated_normals_spread(truncation):
    z = standard_normal((4000, 64), torch.Generator().manual_seed(0), truncation)
    assert z.abs().max() <= truncation
    # the normal truncated to [-T, T] has variance 1 - 2 T phi(T) / (2 Phi(T) - 1); ~T^2 / 3 (uniform) for a tiny T
    t = truncation
    density, mass = math.exp(-t * t / 2) / math.sqrt(2 * math.pi), math.erf(t / math.sqrt(2))
    std = math.sqrt(1 - 2 * t * density / mass) if t > 1e-3 else t / math.sqrt(3)
    assert abs(z.std().item() / std - 1) < 0.02 or t < 1e-15  # below ~1e-16 Phi(-T) rounds to 1/2: z is 0


def test_a_tiny_truncation_is_sampled_at_once_and_the_server_goes_on(client, names):
    """Rejection sampling needed ~10^29 rounds for T = 1e-30: the request got its 504 and its loop held the inference
    thread for good."""
    clf, gan, vae = names
    for name in (gan, vae):
        r = client.post(f"/v1/models/{name}/generate", json={"n": 4, "truncation": 1e-30, "format": "array"})
        assert r.status_code == 200, r.text
        assert len(r.json()["images"]) == 4
    assert client.post(f"/v1/models/{clf}/classify", json={"inputs": [[0] * 784]}).status_code == 200


def ready_status(url: str) -> int:
    return httpx.get(f"{url}/readyz", timeout=10).status_code


def test_an_overrun_turns_readiness_off_until_the_inference_ends(scripted_server, gan_run):
    proc, url, hold = scripted_server([gan_run], timeout_s=0.5)
    name, held = httpx.get(f"{url}/v1/models").json()["models"][0]["name"], scripted_server.held
    generate = f"{url}/v1/models/{name}/generate"
    r = httpx.post(generate, json={"n": 1, "seed": held, "format": "array"}, timeout=30)  # held past its 0.5 s
    assert r.status_code == 504 and "took longer than 0.5 s" in error_of(r)
    until(lambda: ready_status(url) == 503, "/readyz 503 while the inference thread is lost")
    r = httpx.get(f"{url}/readyz", timeout=10)
    assert "past the 0.5 s timeout" in error_of(r)
    assert "genforge_ready 0.0" in httpx.get(f"{url}/metrics", timeout=10).text
    (hold / str(held)).touch()  # the inference ends
    until(lambda: ready_status(url) == 200, "/readyz 200 once the inference ended")
    r = httpx.post(generate, json={"n": 1, "seed": 1, "format": "array"}, timeout=30)
    assert r.status_code == 200, r.text
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=45) == 0


def test_sigterm_ends_a_server_whose_inference_never_ends(scripted_server, gan_run):
    """The interpreter's exit waited for the inference thread, forever for a job that never ends: the server has to
    leave it behind after the drain (30 s at most, then the 1 s it gives a thread to finish)."""
    proc, url, hold = scripted_server([gan_run], timeout_s=0.5)
    name = httpx.get(f"{url}/v1/models").json()["models"][0]["name"]
    r = httpx.post(f"{url}/v1/models/{name}/generate", json={"n": 1, "seed": scripted_server.held},
                   timeout=30)  # never released
    assert r.status_code == 504
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(timeout=45)
    except Exception:
        proc.kill()
        raise
    assert code == 0
    assert "exiting with an inference still running" in (hold / "stderr").read_text()
