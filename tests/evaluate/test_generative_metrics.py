"""Generator metrics against brute force, scipy and closed forms (FD, KID, precision/recall, copying, IWAE)."""

import math

import numpy as np
import pytest
import scipy.linalg
import torch

from genforge.evaluate.generative import (
    elbo,
    frechet_distance,
    iwae_log_likelihood,
    kernel_distance,
    memorization,
    nearest_distances,
    precision_recall,
    summarize_seeds,
)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def frechet_with_sqrtm(a: torch.Tensor, b: torch.Tensor) -> float:
    """The textbook FID formula with scipy's general matrix square root."""
    a, b = a.double().numpy(), b.double().numpy()
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s_a @ s_b).real
    return float(np.sum((a.mean(0) - b.mean(0)) ** 2) + np.trace(s_a + s_b - 2 * covmean))


def test_frechet_matches_scipy_sqrtm_and_is_symmetric():
    a = torch.randn(300, 8, generator=gen(0)) @ torch.randn(8, 8, generator=gen(1))
    b = torch.randn(250, 8, generator=gen(2)) * 1.5 + 0.3
    fd = frechet_distance(a, b)
    assert fd == pytest.approx(frechet_with_sqrtm(a, b), rel=1e-6)
    assert frechet_distance(b, a) == pytest.approx(fd, rel=1e-9)


def test_frechet_is_zero_for_identical_sets():
    a = torch.randn(200, 16, generator=gen(3))
    assert abs(frechet_distance(a, a.clone())) < 1e-8


def test_frechet_matches_closed_form_for_two_gaussians():
    mu_a, mu_b = torch.tensor([0.0, 1.0, -1.0, 2.0]), torch.tensor([1.0, 1.0, 0.0, 0.0])
    l_a = torch.tensor([[1.0, 0, 0, 0], [0.5, 1.0, 0, 0], [0, 0.3, 0.8, 0], [0.2, 0, 0, 1.2]])
    l_b = torch.tensor([[0.7, 0, 0, 0], [0, 1.3, 0, 0], [0.4, 0, 1.0, 0], [0, 0, -0.3, 0.6]])
    cov_a, cov_b = (l_a @ l_a.T).double().numpy(), (l_b @ l_b.T).double().numpy()
    exact = float((mu_a - mu_b).square().sum()) + np.trace(cov_a + cov_b - 2 * scipy.linalg.sqrtm(cov_a @ cov_b).real)
    a = torch.randn(40_000, 4, generator=gen(4)) @ l_a.T + mu_a
    b = torch.randn(40_000, 4, generator=gen(5)) @ l_b.T + mu_b
    assert frechet_distance(a, b) == pytest.approx(exact, abs=0.05)


def test_frechet_rejects_mismatched_features():
    with pytest.raises(ValueError, match="different feature sizes"):
        frechet_distance(torch.randn(10, 3), torch.randn(10, 4))


def test_kernel_distance_near_zero_for_same_distribution_and_positive_when_shifted():
    a, b = torch.randn(600, 16, generator=gen(6)), torch.randn(600, 16, generator=gen(7))
    same_mean, same_std = kernel_distance(a, b, subsets=20, subset_size=300)
    shifted_mean, shifted_std = kernel_distance(a, b + 0.5, subsets=20, subset_size=300)
    assert abs(same_mean) < 0.02
    assert shifted_mean > 0.1
    assert shifted_mean > 10 * (abs(same_mean) + same_std)
    assert kernel_distance(a, b, subsets=20, subset_size=300) == (same_mean, same_std)  # seeded


def clusters(centres: torch.Tensor, per_centre: int, seed: int, spread: float = 0.1) -> torch.Tensor:
    noise = torch.randn(len(centres), per_centre, centres.shape[1], generator=gen(seed)) * spread
    return (centres[:, None] + noise).reshape(-1, centres.shape[1])  # (modes * per_centre, D)


def precision_recall_brute_force(real: torch.Tensor, fake: torch.Tensor, k: int) -> tuple[float, float]:
    d_rr, d_ff, d_fr = torch.cdist(real, real), torch.cdist(fake, fake), torch.cdist(fake, real)
    r_real = d_rr.sort(1).values[:, k]
    r_fake = d_ff.sort(1).values[:, k]
    precision = (d_fr <= r_real[None]).any(1).double().mean().item()
    recall = (d_fr.T <= r_fake[None]).any(1).double().mean().item()
    return precision, recall


def test_precision_recall_identical_sets_and_disjoint_clusters():
    real = torch.randn(200, 8, generator=gen(8))
    assert precision_recall(real, real.clone(), k=3) == (1.0, 1.0)
    assert precision_recall(real, real + 100.0, k=3) == (0.0, 0.0)


def test_precision_recall_when_fakes_cover_half_the_modes():
    centres = torch.tensor([[0.0, 0.0], [20.0, 0.0], [0.0, 20.0], [20.0, 20.0]])  # four far-apart modes
    real = clusters(centres, 200, seed=9)
    fake = clusters(centres[:2], 200, seed=10)  # the generator has dropped two modes
    precision, recall = precision_recall(real, fake, k=5)
    assert precision > 0.95
    assert 0.45 < recall <= 0.5


def test_precision_recall_chunked_equals_brute_force():
    real = torch.randn(150, 5, generator=gen(11), dtype=torch.float64)
    fake = torch.randn(130, 5, generator=gen(12), dtype=torch.float64) * 1.3 + 0.4
    expected = precision_recall_brute_force(real, fake, k=5)
    assert 0 < expected[0] < 1 and 0 < expected[1] < 1  # the case exercises both sides of the boundary
    assert precision_recall(real, fake, k=5, chunk=17) == pytest.approx(expected, abs=1e-12)


def test_nearest_distances_equals_brute_force():
    queries, reference = torch.randn(70, 12, generator=gen(13)), torch.randn(90, 12, generator=gen(14))
    expected = torch.cdist(queries.double(), reference.double()).min(1).values.float()
    torch.testing.assert_close(nearest_distances(queries, reference, chunk=16), expected, rtol=1e-5, atol=1e-5)


def test_nearest_distances_exclude_self():
    x = torch.randn(60, 7, generator=gen(15))
    assert nearest_distances(x, x).abs().max().item() == 0.0  # every row finds itself
    d = torch.cdist(x.double(), x.double()).fill_diagonal_(float("inf"))
    expected = d.min(1).values.float()
    torch.testing.assert_close(nearest_distances(x, x, chunk=8, exclude_self=True), expected, rtol=1e-5, atol=1e-5)


def test_memorization_flags_copies_and_passes_fresh_noise():
    images = torch.randint(0, 256, (300, 1, 8, 8), generator=gen(16), dtype=torch.uint8)
    train, test = images[:200], images[200:]
    copies = memorization(train[:50].clone(), train, test)
    assert copies["sample_nn_median"] == 0.0
    assert copies["share_closer_than_test_p05"] == pytest.approx(1.0)
    assert copies["ratio_median"] == 0.0
    # fresh uniform noise drawn from a wider range than the images: farther from train than test images are
    noise = torch.randint(0, 256, (50, 1, 8, 8), generator=gen(17), dtype=torch.uint8)
    noise = torch.where(noise > 127, 255, 0).to(torch.uint8)
    fresh = memorization(noise, train, test, max_train=150)
    assert fresh["ratio_median"] > 1.0
    assert fresh["share_closer_than_test_p05"] == 0.0
    assert set(fresh) == {"sample_nn_median", "test_nn_median", "sample_nn_p05", "test_nn_p05", "ratio_median",
                          "share_closer_than_test_p05"}


class LinearGaussian:
    """Probabilistic PCA, x = W z + b + sigma * noise with z ~ N(0, I), and a deliberately imperfect encoder.

    q(z|x) is diagonal with the exact posterior mean and twice the posterior's marginal variances
    (Tipping & Bishop 1999: posterior N(M^-1 W^T (x - b), sigma^2 M^-1), M = W^T W + sigma^2 I).
    """

    def __init__(self, data_dim: int = 5, latent_dim: int = 2, sigma: float = 0.5, seed: int = 0):
        g = gen(seed)
        self.W = torch.randn(data_dim, latent_dim, generator=g, dtype=torch.float64)  # (D, L)
        self.b = torch.randn(data_dim, generator=g, dtype=torch.float64)  # (D,)
        self.sigma = sigma
        m = self.W.T @ self.W + sigma**2 * torch.eye(latent_dim, dtype=torch.float64)  # (L, L)
        self.m_inv = torch.linalg.inv(m)
        self.post_var = sigma**2 * self.m_inv.diagonal()  # (L,)
        self.encode_calls = 0

    def sample(self, n: int, seed: int) -> torch.Tensor:
        g = gen(seed)
        z = torch.randn(n, self.W.shape[1], generator=g, dtype=torch.float64)
        return z @ self.W.T + self.b + self.sigma * torch.randn(n, self.W.shape[0], generator=g, dtype=torch.float64)

    def encode(self, x, labels):
        self.encode_calls += 1
        mu = (x - self.b) @ self.W @ self.m_inv.T  # (N, L)
        return mu, (2 * self.post_var).log().expand_as(mu)

    def decode(self, z, labels):
        return z @ self.W.T + self.b  # (N, D)

    def log_likelihood(self, x, params):
        return torch.distributions.Normal(params, self.sigma).log_prob(x).sum(-1)  # (N,)

    def exact_log_px(self, x):
        cov = self.W @ self.W.T + self.sigma**2 * torch.eye(self.W.shape[0], dtype=torch.float64)
        return torch.distributions.MultivariateNormal(self.b, cov).log_prob(x)  # (N,)


def test_iwae_converges_to_the_exact_log_likelihood():
    model = LinearGaussian()
    x = model.sample(8, seed=1)
    estimate = iwae_log_likelihood(model, x, k=5000, chunk=700, generator=gen(2))
    exact = model.exact_log_px(x)
    assert estimate.shape == (8,) and estimate.dtype == torch.float64
    assert (estimate - exact).abs().mean().item() < 0.5
    assert (estimate - exact).abs().max().item() < 0.5


def test_iwae_bound_tightens_with_k_and_stays_below_exact():
    model = LinearGaussian()
    x = model.sample(64, seed=3)
    exact = model.exact_log_px(x).mean().item()
    means = {k: iwae_log_likelihood(model, x, k=k, chunk=128, generator=gen(4)).mean().item() for k in (1, 10, 1000)}
    assert means[1] < means[10] < means[1000]
    for k, value in means.items():
        assert value <= exact + 0.02, k
    assert exact - means[1] > 0.05  # the encoder is imperfect, so the ELBO has a real gap


def test_iwae_is_deterministic_and_chunking_only_changes_the_draw_layout():
    model = LinearGaussian()
    x = model.sample(4, seed=5)
    a = iwae_log_likelihood(model, x, k=50, chunk=50, generator=gen(6))
    b = iwae_log_likelihood(model, x, k=50, chunk=50, generator=gen(6))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    c = iwae_log_likelihood(model, x, k=50, chunk=7, generator=gen(6))  # 8 chunks, last one partial
    assert (c - a).abs().max().item() < 0.5


def test_iwae_repeats_labels_with_the_batch():
    seen = []

    class Labelled(LinearGaussian):
        def decode(self, z, labels):
            seen.append(labels.clone())
            return super().decode(z, labels)

    model = Labelled()
    x, labels = model.sample(3, seed=7), torch.tensor([4, 5, 6])
    iwae_log_likelihood(model, x, labels, k=5, chunk=2, generator=gen(8))
    assert [s.tolist() for s in seen] == [[4, 5, 6] * 2, [4, 5, 6] * 2, [4, 5, 6]]


def test_elbo_matches_one_sample_iwae_in_expectation():
    model = LinearGaussian()
    x = model.sample(4000, seed=9)
    out = elbo(model, x, generator=gen(10))
    assert out["elbo"] == pytest.approx(-(out["recon"] + out["kl"]))
    one_sample = iwae_log_likelihood(model, x, k=1, generator=gen(11)).mean().item()
    assert out["elbo"] == pytest.approx(one_sample, abs=0.1)
    assert out["elbo"] < model.exact_log_px(x).mean().item()
    assert out["kl"] > 0


def test_elbo_kl_is_zero_for_the_prior():
    class PriorEncoder(LinearGaussian):
        def encode(self, x, labels):
            zeros = torch.zeros(len(x), self.W.shape[1], dtype=torch.float64)
            return zeros, zeros.clone()

    model = PriorEncoder()
    out = elbo(model, model.sample(16, seed=12), generator=gen(13))
    assert out["kl"] == 0.0
    assert out["elbo"] == -out["recon"]


def test_summarize_seeds():
    out = summarize_seeds([1.0, 2.0, 4.0])
    assert out["mean"] == pytest.approx(7 / 3)
    assert out["sd"] == pytest.approx(math.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 2))
    assert out["n"] == 3 and out["values"] == [1.0, 2.0, 4.0]
    assert summarize_seeds([0.5]) == {"mean": 0.5, "sd": 0.0, "n": 1, "values": [0.5]}
    with pytest.raises(ValueError, match="at least one value"):
        summarize_seeds([])
