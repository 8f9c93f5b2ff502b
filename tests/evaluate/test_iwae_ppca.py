"""Acceptance: genforge's own VAE, made linear-Gaussian (probabilistic PCA), has a closed-form log p(x); the IWAE
estimate with large k comes within 0.5 nats of it, and the bound tightens as k grows."""

import math

import torch

from genforge.evaluate.generative import iwae_log_likelihood
from genforge.models.vae import VAE, VAEConfig

D, L, SIGMA = 6, 2, 0.3


def ppca_vae() -> tuple[VAE, torch.Tensor, torch.Tensor]:
    """x = W z + b + e, z ~ N(0, I), e ~ N(0, SIGMA^2 I); the encoder is the exact posterior with its variance
    times 5, so q != p(z|x) and the bound is not tight at k = 1 (Tipping & Bishop 1999 for the posterior)."""
    g = torch.Generator().manual_seed(0)
    W, b = torch.randn(D, L, generator=g), torch.rand(D, generator=g)
    vae = VAE(VAEConfig(arch="mlp", hidden=[], latent_dim=L, likelihood="gaussian"), (D,), 1).double()
    (enc,), dec = vae.encoder, vae.decoder[0]
    M = W.T @ W + SIGMA**2 * torch.eye(L)  # (L, L)
    A = torch.linalg.solve(M, W.T)  # posterior mean = A (x - b)
    post_var = SIGMA**2 * torch.linalg.inv(M).diagonal()  # diagonal of the posterior covariance
    with torch.no_grad():
        dec.weight.copy_(W)
        dec.bias.copy_(b)
        vae.log_sigma.fill_(math.log(SIGMA))
        enc.weight.zero_()
        enc.weight[:L] = A
        enc.bias[:L] = -(A @ b)
        enc.bias[L:] = torch.log(5 * post_var)
    return vae, W.double(), b.double()


def exact_log_px(x: torch.Tensor, W: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    cov = W @ W.T + SIGMA**2 * torch.eye(D, dtype=torch.float64)
    return torch.distributions.MultivariateNormal(b, covariance_matrix=cov).log_prob(x)


def test_iwae_matches_exact_ppca_likelihood_and_tightens():
    vae, W, b = ppca_vae()
    g = torch.Generator().manual_seed(1)
    x = (W @ torch.randn(L, 64, generator=g, dtype=torch.float64)).T + b + SIGMA * torch.randn(64, D, generator=g,
                                                                                            dtype=torch.float64)
    exact = exact_log_px(x, W, b)
    estimates = {k: iwae_log_likelihood(vae, x, k=k, chunk=500, generator=torch.Generator().manual_seed(2))
                 for k in (1, 10, 1000, 5000)}
    assert (estimates[5000] - exact).abs().max() < 0.5
    means = [estimates[k].mean().item() for k in (1, 10, 1000)]
    assert means == sorted(means) and means[-1] - means[0] > 0.1  # the bound tightens with k
    assert estimates[5000].mean().item() <= exact.mean().item() + 0.05  # and stays a lower bound on average
