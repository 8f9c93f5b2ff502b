"""Generator evaluation that can be compared: one fixed evaluation binarization (whatever the run's seed),
discrete likelihoods in nats and bits/dim for both pixel models, and one evaluator pass over the samples."""

import math
from pathlib import Path

import pytest
import torch
from test_iwae_ppca import SIGMA, D, exact_log_px, ppca_vae

from genforge.config import RunConfig
from genforge.data import load_dataset
from genforge.data.dataset import make_dataset
from genforge.evaluate.features import Evaluator
from genforge.evaluate.generative import evaluate_generator, generate, likelihood_metrics
from genforge.models.catalogue import build_model
from genforge.models.classifier import FastCNNConfig
from genforge.models.vae import VAE, VAEConfig
from genforge.registry import task_of


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", progress=False)  # 8x8 uint8 images, 360 test images, no download


def _vae(ds, **cfg) -> VAE:
    torch.manual_seed(0)
    return VAE(VAEConfig(**{"arch": "mlp", "hidden": [32], "latent_dim": 4, **cfg}), ds.input_shape, len(ds.classes))


def _cfg(seed: int) -> RunConfig:
    return RunConfig.model_validate({"seed": seed, "model": {"kind": "vae"}, "eval": {"iwae_k": 8, "iwae_images": 40}})


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_the_likelihood_does_not_depend_on_the_runs_seed(digits, likelihood):
    model = _vae(digits, likelihood=likelihood)
    task = task_of("vae")
    first, second = task.likelihood(model, digits, _cfg(0)), task.likelihood(model, digits, _cfg(1))
    assert first == second  # the same binary (dequantized) test images and the same estimator noise
    assert likelihood_metrics(model, digits, 8, 40) == first  # bench/ calls this with the same defaults


def test_gaussian_nll_is_the_discrete_8_bit_likelihood():
    """The reported NLL of integer pixels k is -log P(k), P(k) = integral of the density over the cell
    [k, k + 1)^D / 256: here computed independently by Monte Carlo over the cell with the exact PPCA density."""
    vae, W, b = ppca_vae()
    vae = vae.float()
    g = torch.Generator().manual_seed(3)
    x = (W @ torch.randn(W.shape[1], 300, generator=g, dtype=torch.float64)).T * 0.2 + 0.5
    x = x + SIGMA * torch.randn(300, D, generator=g, dtype=torch.float64)
    k = (x * 256).floor().clamp(0, 255).to(torch.uint8)  # (300, D) 8-bit data
    ds = make_dataset("ppca", k, torch.zeros(300), k, torch.zeros(300), ["x"], "synthetic")
    like = likelihood_metrics(vae, ds, iwae_k=2000, iwae_images=300)

    u = torch.rand(256, 300, D, generator=g, dtype=torch.float64)  # points inside each image's cell
    log_density = exact_log_px((k.double() + u) / 256, W, b)  # (256, 300) on [0, 1]^D
    log_cell = torch.logsumexp(log_density, 0) - math.log(256) - D * math.log(256)  # log P(k): mean x cell volume
    exact_nll = -log_cell.mean().item()
    assert exact_nll - 0.05 < like["nll_iwae"] < exact_nll + 0.5  # an upper bound, and a close one
    assert like["nll_iwae"] == pytest.approx(like["nll_iwae_continuous"] + D * math.log(256))
    assert like["test_elbo"] == pytest.approx(like["test_elbo_continuous"] - D * math.log(256))
    assert like["bits_per_dim"] == pytest.approx(like["nll_iwae"] / (D * math.log(2)))
    assert like["nll_iwae"] > 0 and "8-bit" in like["measure"] and like["dims"] == D


def test_bernoulli_bits_per_dim_are_nats_over_d_ln_2(digits):
    like = likelihood_metrics(_vae(digits), digits, 8, 40)
    d = 64  # 8x8 pixels
    assert like["dims"] == d and "nll_iwae_continuous" not in like and "binarized" in like["measure"]
    assert like["bits_per_dim"] == pytest.approx(like["nll_iwae"] / (d * math.log(2)))
    assert like["bits_per_dim_elbo"] == pytest.approx(-like["test_elbo"] / (d * math.log(2)))
    assert 0 < like["bits_per_dim"] <= 1.5  # a binary pixel costs at most ~1 bit to a model near uniform


def test_the_evaluator_runs_once_over_the_generated_samples(digits):
    mean, std = torch.full((1, 1, 1), 0.3), torch.full((1, 1, 1), 0.3)
    torch.manual_seed(0)
    network = build_model(FastCNNConfig(channels=[8, 16]), digits.input_shape, len(digits.classes), mean, std).eval()
    evaluator = Evaluator(network, "0" * 16, float("nan"), Path("."))
    rows = []
    network.net[0].register_forward_hook(lambda _m, inputs, _out: rows.append(len(inputs[0])))
    model, n = _vae(digits), len(digits.test_x)
    result = evaluate_generator(model, digits, evaluator, n=n, seeds=1)
    # one pass each: the reference (test) images, the samples, and the train and noise calibration sets
    assert sum(rows) == 4 * n
    predicted = evaluator.predict(generate(model, n, 0))
    assert result["class_histogram"] == torch.bincount(predicted, minlength=10).tolist()
