"""GAN and VAE: shapes and ranges, finite losses and gradients, seeded sampling, truncation, conditioning,
and the exact pieces (closed-form KL, Gaussian log-likelihood, the linear VAE)."""

import math

import pydantic
import pytest
import torch
from torch import nn

from genforge.errors import GenforgeError
from genforge.models.gan import GAN, GANConfig
from genforge.models.vae import VAE, VAEConfig

SHAPES = [(1, 28, 28), (3, 32, 32)]
N = 4


def _images(shape, n=N, seed=0):
    return torch.randint(0, 256, (n, *shape), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def _labels(n=N, num_classes=3):
    return torch.arange(n) % num_classes


def _gan(shape=(1, 28, 28), num_classes=3, **cfg):
    torch.manual_seed(0)
    return GAN(GANConfig(**{"width": 8, "latent_dim": 8, **cfg}), shape, num_classes)


def _vae(shape=(1, 28, 28), num_classes=3, **cfg):
    torch.manual_seed(0)
    return VAE(VAEConfig(**{"width": 4, "latent_dim": 4, "hidden": [32, 16], **cfg}), shape, num_classes)


def _assert_finite_grads(module: nn.Module, every: bool = True):
    grads = [p.grad for p in module.parameters() if p.grad is not None or every]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)


# ---- GAN

@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("loss", ["bce", "hinge", "wgan-gp"])
@pytest.mark.parametrize("arch", ["mlp", "dcgan"])
def test_gan_shapes_and_finite_losses(arch, loss, shape):
    model = _gan(shape, arch=arch, loss=loss)
    fake = model.generate(model.noise(N))
    assert fake.shape == (N, *shape) and fake.dtype == torch.float32
    assert fake.min() >= -1 and fake.max() <= 1
    real = model.to_model_space(_images(shape))
    assert model.critic(real).shape == (N,)

    d_loss, stats = model.d_loss(real, fake.detach())
    assert torch.isfinite(d_loss) and d_loss.dim() == 0
    assert {"d_real", "d_fake", "d_loss"} <= set(stats) and all(type(v) is float for v in stats.values())
    assert ("gp" in stats) == (loss == "wgan-gp")
    d_loss.backward()
    _assert_finite_grads(model.discriminator)
    assert all(p.grad is None for p in model.generator.parameters())  # fake was detached

    model.zero_grad()
    g_loss = model.g_loss(model.generate(model.noise(N)))
    assert torch.isfinite(g_loss) and g_loss.dim() == 0
    g_loss.backward()
    _assert_finite_grads(model.generator)


def test_losses_match_their_definitions():
    real_score, fake_score = torch.tensor([0.5, -1.0]), torch.tensor([2.0, -0.3])
    for loss, d_expected, g_expected in [
        ("bce", -torch.log(torch.sigmoid(real_score)).mean() - torch.log(1 - torch.sigmoid(fake_score)).mean(),
         -torch.log(torch.sigmoid(fake_score)).mean()),
        ("hinge", (1 - real_score).clamp_min(0).mean() + (1 + fake_score).clamp_min(0).mean(), -fake_score.mean()),
    ]:
        model = _gan(loss=loss)
        model.critic = lambda x, labels=None: x.flatten(1)[:, 0]  # the score is the first pixel
        real, fake = real_score.view(2, 1, 1, 1).expand(2, 1, 28, 28), fake_score.view(2, 1, 1, 1).expand(2, 1, 28, 28)
        torch.testing.assert_close(model.d_loss(real, fake)[0], d_expected)
        torch.testing.assert_close(model.g_loss(fake), g_expected)


@pytest.mark.parametrize("arch", ["mlp", "dcgan"])
def test_gradient_penalty_is_finite_when_real_equals_fake(arch):
    model = _gan(arch=arch, loss="wgan-gp")
    real = model.to_model_space(_images((1, 28, 28)))
    loss, stats = model.d_loss(real, real.clone())
    assert math.isfinite(stats["gp"])
    loss.backward()
    _assert_finite_grads(model.discriminator)


def test_gradient_penalty_is_finite_when_the_critic_gradient_is_exactly_zero():
    # the NaN trap: d||g||/dg = g/||g|| is 0/0 at g = 0 without the 1e-12 inside the square root
    model = _gan(loss="wgan-gp")
    nn.init.zeros_(model.discriminator.head.weight)  # D is constant in x: its input gradient is exactly 0
    real = model.to_model_space(_images((1, 28, 28)))
    gp = model.gradient_penalty(real, real.clone())
    torch.testing.assert_close(gp, torch.tensor((1e-6 - 1) ** 2))
    gp.backward()
    _assert_finite_grads(model.discriminator, every=False)  # the head's bias does not move the penalty


def test_gradient_penalty_uses_one_interpolation_weight_per_sample():
    model = _gan(loss="wgan-gp")
    seen = []
    model.critic = lambda x, labels=None: seen.append(x.detach()) or x.flatten(1).sum(1)
    real, fake = torch.ones(3, 1, 28, 28), -torch.ones(3, 1, 28, 28)
    model.gradient_penalty(real, fake)
    x_hat = seen[0].flatten(1)  # eps * 1 + (1 - eps) * (-1) = 2 eps - 1, constant within each sample
    assert torch.equal(x_hat, x_hat[:, :1].expand_as(x_hat)) and x_hat[:, 0].unique().numel() == 3


@pytest.mark.parametrize("arch", ["dcgan", "mlp"])
def test_gradient_penalty_differentiates_each_sample_on_its_own_with_minibatch_std(arch):
    model = _gan(arch=arch, loss="wgan-gp", minibatch_std=True)
    seen = []
    hook = model.discriminator.register_forward_hook(lambda _m, inputs, out: seen.append((inputs[0], out)))
    model.gradient_penalty(_images((1, 28, 28)).float() / 127.5 - 1, torch.rand(N, 1, 28, 28) * 2 - 1)
    hook.remove()
    ((x_hat, score),) = seen  # what the penalty differentiates: D's scores on the interpolates
    for i in range(N):
        (grad,) = torch.autograd.grad(score[i], x_hat, retain_graph=True)  # (N, C, H, W)
        others = torch.cat([grad[:i], grad[i + 1:]])
        assert grad[i].abs().sum() > 0 and torch.equal(others, torch.zeros_like(others))
    real, fake = _images((1, 28, 28)).float() / 127.5 - 1, torch.rand(N, 1, 28, 28) * 2 - 1
    assert model.critic(real).shape == (N,)
    (coupled,) = torch.autograd.grad(model.critic(fake.requires_grad_(True))[0], fake)
    assert coupled[1:].abs().sum() > 0  # outside the penalty, D still sees the batch's spread


@pytest.mark.parametrize("spectral_norm", [False, True])
@pytest.mark.parametrize("conditioning", ["projection", "concat"])
@pytest.mark.parametrize("arch", ["mlp", "dcgan"])
def test_conditional_gan_runs_and_uses_labels(arch, conditioning, spectral_norm):
    model = _gan((3, 32, 32), arch=arch, conditional=True, conditioning=conditioning,
                 spectral_norm=spectral_norm, loss="wgan-gp")
    labels = _labels()
    z = model.noise(N)
    fake = model.generate(z, labels)
    assert fake.shape == (N, 3, 32, 32)
    assert not torch.allclose(fake, model.generate(z, (labels + 1) % 3))
    real = model.to_model_space(_images((3, 32, 32)))
    assert not torch.allclose(model.critic(real, labels), model.critic(real, (labels + 1) % 3))
    loss, _ = model.d_loss(real, fake.detach(), labels)
    loss.backward()
    _assert_finite_grads(model.discriminator)
    model.zero_grad()
    model.g_loss(model.generate(z, labels), labels).backward()
    _assert_finite_grads(model.generator)


def test_spectral_norm_bounds_every_discriminator_layer():
    model = _gan(spectral_norm=True)
    for _ in range(30):  # power iteration converges over forward passes in train mode
        model.critic(torch.zeros(2, 1, 28, 28))
    for module in model.discriminator.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            assert hasattr(module, "parametrizations")
            sigma = torch.linalg.matrix_norm(module.weight.detach().flatten(1), ord=2)
            assert sigma < 1.05
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.discriminator.modules())


def test_conditional_gan_without_labels_is_rejected():
    model = _gan(conditional=True)
    with pytest.raises(ValueError, match="labels"):
        model.generate(model.noise(N))
    with pytest.raises(ValueError, match="shape"):
        model.critic(torch.zeros(N, 1, 28, 28), torch.zeros(N + 1, dtype=torch.long))


@pytest.mark.parametrize("arch", ["mlp", "dcgan"])
def test_gan_sample_is_seeded_uint8_and_restores_mode(arch):
    model = _gan(arch=arch)
    model.train()
    a = model.sample(5, seed=1)
    assert a.dtype == torch.uint8 and a.shape == (5, 1, 28, 28) and a.device.type == "cpu"
    assert model.training
    assert torch.equal(a, model.sample(5, seed=1))
    assert not torch.equal(a, model.sample(5, seed=2))
    model.eval()
    model.sample(2, seed=1)
    assert not model.training


def test_conditional_gan_sample_labels():
    model = _gan(conditional=True, num_classes=3)
    assert model.sample(7, seed=0).shape == (7, 1, 28, 28)
    # labels=None cycles 0, 1, 2, 0, ...: the same as asking for those labels
    assert torch.equal(model.sample(7, seed=0), model.sample(7, labels=torch.arange(7) % 3, seed=0))
    assert torch.equal(model.sample(4, labels=torch.tensor([2, 2, 2, 2]), seed=0)[0],
                       model.sample(4, labels=torch.tensor([2, 0, 1, 0]), seed=0)[0])
    with pytest.raises(ValueError, match="4 integers"):
        model.sample(4, labels=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="0..2"):
        model.sample(2, labels=torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="unconditional"):
        _gan().sample(2, labels=torch.tensor([0, 1]))


def test_truncation_bounds_noise_and_is_seeded():
    model = _gan(latent_dim=16)
    z = model.noise(500, torch.Generator().manual_seed(0), truncation=0.5)
    assert z.shape == (500, 16) and z.abs().max() <= 0.5
    assert z.abs().max() > 0.45  # truncated, not shrunk
    assert torch.equal(z, model.noise(500, torch.Generator().manual_seed(0), truncation=0.5))
    # entries inside [-T, T] keep their values: a huge T is no truncation at all
    assert torch.equal(model.noise(8, torch.Generator().manual_seed(3), truncation=100.0),
                       model.noise(8, torch.Generator().manual_seed(3)))
    assert model.sample(3, seed=0, truncation=0.5).shape == (3, 1, 28, 28)
    with pytest.raises(ValueError, match="truncation"):
        model.noise(2, truncation=0.0)


def test_gan_pixel_space_round_trip():
    x = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16)
    y = GAN.to_model_space(x)
    assert y.min() == -1 and y.max() == 1
    assert torch.equal(GAN.to_uint8(y), x)
    assert torch.equal(GAN.to_uint8(torch.tensor([-3.0, 3.0])), torch.tensor([0, 255], dtype=torch.uint8))


def test_gan_rejects_bad_configs_and_shapes():
    with pytest.raises(pydantic.ValidationError):
        GANConfig(nz=100)
    with pytest.raises(pydantic.ValidationError):
        GANConfig(loss="wgan")
    with pytest.raises(GenforgeError, match="divisible by 4"):  # a user's mistake: one line in the CLI
        GAN(GANConfig(width=8), (1, 30, 30), 10)
    assert GAN(GANConfig(arch="mlp", width=8), (1, 30, 30), 10).sample(2, seed=0).shape == (2, 1, 30, 30)


# ---- VAE

@pytest.mark.parametrize("conditional", [False, True])
@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
@pytest.mark.parametrize("arch", ["mlp", "conv"])
@pytest.mark.parametrize("shape", SHAPES)
def test_vae_shapes_and_finite_loss(shape, arch, likelihood, conditional):
    model = _vae(shape, arch=arch, likelihood=likelihood, conditional=conditional)
    labels = _labels() if conditional else None
    x = model.prepare(_images(shape), torch.Generator().manual_seed(0))
    assert x.shape == (N, *shape) and x.min() >= 0 and x.max() <= 1
    mu, logvar = model.encode(x, labels)
    assert mu.shape == logvar.shape == (N, 4)
    params = model.decode(model.reparameterize(mu, logvar), labels)
    assert params.shape == (N, *shape)
    image = model.mean_image(params)
    assert image.min() >= 0 and image.max() <= 1
    assert model.log_likelihood(x, params).shape == (N,)

    loss, stats = model.loss(x, labels)
    assert torch.isfinite(loss) and loss.dim() == 0
    assert set(stats) == {"recon", "kl", "elbo"} and all(type(v) is float for v in stats.values())
    torch.testing.assert_close(stats["elbo"], -(stats["recon"] + stats["kl"]))  # beta = 1
    assert stats["kl"] >= 0
    loss.backward()
    _assert_finite_grads(model)
    if likelihood == "gaussian":
        assert model.log_sigma.grad is not None and "log_sigma" in model.state_dict()
    else:
        assert model.log_sigma is None and "log_sigma" not in model.state_dict()

    samples = model.sample(5, seed=0)
    assert samples.dtype == torch.uint8 and samples.shape == (5, *shape)
    recon = model.reconstruct(_images(shape), labels)
    assert recon.dtype == torch.uint8 and recon.shape == (N, *shape)


def test_vae_loss_is_recon_plus_beta_kl():
    model = _vae(arch="mlp", beta=4.0)
    x = model.prepare(_images((1, 28, 28)))
    loss, stats = model.loss(x, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(loss.item(), stats["recon"] + 4.0 * stats["kl"], rtol=1e-5, atol=1e-3)
    assert torch.equal(loss, model.loss(x, generator=torch.Generator().manual_seed(0))[0])


def test_kl_is_zero_at_the_prior_and_matches_torch():
    zero = torch.zeros(3, 5)
    assert torch.equal(VAE.kl_divergence(zero, zero), torch.zeros(3))
    mu, logvar = torch.randn(3, 5), torch.randn(3, 5)
    q = torch.distributions.Normal(mu, torch.exp(0.5 * logvar))
    p = torch.distributions.Normal(torch.zeros(3, 5), torch.ones(3, 5))
    torch.testing.assert_close(VAE.kl_divergence(mu, logvar), torch.distributions.kl_divergence(q, p).sum(1))


def test_log_likelihoods_are_exact():
    gaussian = _vae(arch="mlp", likelihood="gaussian")
    with torch.no_grad():
        gaussian.log_sigma.fill_(-1.3)
    x, mean = torch.rand(N, 1, 28, 28), torch.rand(N, 1, 28, 28)
    expected = torch.distributions.Normal(mean, math.exp(-1.3)).log_prob(x).flatten(1).sum(1)
    torch.testing.assert_close(gaussian.log_likelihood(x, mean), expected)
    # extra leading dims (several z per x) broadcast against x
    stacked = torch.stack([mean, mean.flip(0)])  # (2, N, 1, 28, 28)
    torch.testing.assert_close(gaussian.log_likelihood(x, stacked)[0], expected)

    bernoulli = _vae(arch="mlp")
    x, logits = torch.bernoulli(torch.full((N, 1, 28, 28), 0.3)), torch.randn(N, 1, 28, 28)
    expected = torch.distributions.Bernoulli(logits=logits).log_prob(x).flatten(1).sum(1)
    torch.testing.assert_close(bernoulli.log_likelihood(x, logits), expected)


@pytest.mark.parametrize("conditional", [False, True])
def test_linear_gaussian_vae_is_exactly_linear(conditional):
    model = _vae(arch="mlp", hidden=[], likelihood="gaussian", conditional=conditional)
    assert [type(m) for m in model.encoder] == [nn.Linear]
    assert [type(m) for m in model.decoder] == [nn.Linear, nn.Unflatten]
    labels = _labels() if conditional else None
    onehot = torch.nn.functional.one_hot(labels, 3).float() if conditional else torch.zeros(N, 0)

    z = 5 * torch.randn(N, 4)
    W, b = model.decoder[0].weight, model.decoder[0].bias  # (784, 4 [+ 3]), (784,)
    expected = (torch.cat([z, onehot], 1) @ W.T + b).view(N, 1, 28, 28)
    torch.testing.assert_close(model.decode(z, labels), expected)  # no sigmoid: means leave [0, 1]
    assert model.decode(z, labels).abs().max() > 1

    x = torch.rand(N, 1, 28, 28)
    A, c = model.encoder[0].weight, model.encoder[0].bias  # (8, 784 [+ 3]), (8,)
    mu, logvar = model.encode(x, labels)
    torch.testing.assert_close(torch.cat([mu, logvar], 1), torch.cat([x.flatten(1), onehot], 1) @ A.T + c)


def test_nonlinear_gaussian_means_are_sigmoids():
    model = _vae(arch="mlp", likelihood="gaussian")
    assert isinstance(model.decoder[-1], nn.Sigmoid)
    means = model.decode(50 * torch.randn(N, 4))
    assert means.min() >= 0 and means.max() <= 1


def test_prepare_binarizes_or_dequantizes():
    x = _images((1, 28, 28))
    binary = _vae(likelihood="bernoulli").prepare(x, torch.Generator().manual_seed(0))
    assert set(binary.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(binary, _vae().prepare(x, torch.Generator().manual_seed(0)))
    assert torch.equal(_vae().prepare(torch.full((2, 3), 255, dtype=torch.uint8)), torch.ones(2, 3))
    dequantized = _vae(likelihood="gaussian").prepare(x, torch.Generator().manual_seed(0))
    assert (dequantized >= x.float() / 256).all() and (dequantized < (x.float() + 1) / 256).all()


def test_vae_sample_is_seeded_and_restores_mode():
    model = _vae(conditional=True)
    model.train()
    a = model.sample(6, seed=1)
    assert model.training
    assert torch.equal(a, model.sample(6, seed=1))
    assert not torch.equal(a, model.sample(6, seed=2))
    assert torch.equal(a, model.sample(6, labels=torch.arange(6) % 3, seed=1))  # labels cycle when None
    assert not torch.equal(a, model.sample(6, labels=torch.zeros(6, dtype=torch.long), seed=1))
    assert model.sample(2, labels=torch.tensor([1, 2]), seed=0, truncation=0.5).shape == (2, 1, 28, 28)
    with pytest.raises(ValueError, match="3 integers"):
        model.sample(3, labels=torch.tensor([1]))


def test_reconstruct_is_deterministic():
    model = _vae()
    x = _images((1, 28, 28))
    assert torch.equal(model.reconstruct(x), model.reconstruct(x))


def test_conditional_vae_without_labels_is_rejected():
    model = _vae(conditional=True)
    x = torch.rand(N, 1, 28, 28)
    for call in (lambda: model.encode(x), lambda: model.decode(torch.zeros(N, 4)), lambda: model.loss(x),
                 lambda: model.reconstruct(_images((1, 28, 28)))):
        with pytest.raises(ValueError, match="conditional"):
            call()
    with pytest.raises(ValueError, match="prepare"):
        model.encode(_images((1, 28, 28)), _labels())


def test_vae_rejects_bad_configs_and_shapes():
    with pytest.raises(pydantic.ValidationError):
        VAEConfig(latent=3)
    with pytest.raises(pydantic.ValidationError):
        VAEConfig(likelihood="laplace")
    with pytest.raises(ValueError, match="divisible by 4"):
        VAE(VAEConfig(), (1, 30, 30), 10)
    assert VAE(VAEConfig(arch="mlp", hidden=[8]), (5,), 2).sample(3, seed=0).shape == (3, 5)


def test_autoregressive_likelihood_is_a_distribution_over_binary_images():
    """p(x|z) = prod_i p(x_i | z, x_<i) sums to 1 over all 2^9 binary 3x3 images only if no pixel sees itself
    or a later one: the mask is causal. The context weights are random, not the zeros a model starts with."""
    import itertools

    model = _vae(shape=(1, 3, 3), arch="mlp", autoregressive=True, context=3)
    with torch.no_grad():
        model.context.weight.normal_(0, 2.0)
        model.context.bias.normal_(0, 1.0)
    images = torch.tensor(list(itertools.product([0.0, 1.0], repeat=9))).view(-1, 1, 3, 3)  # (512, 1, 3, 3)
    logits = torch.randn(1, 1, 3, 3).expand(len(images), -1, -1, -1)  # one z's decoder output
    with torch.no_grad():
        total = model.log_likelihood(images, logits).double().exp().sum()
    assert abs(total.item() - 1) < 1e-5
    first = torch.zeros(1, 1, 3, 3)
    first[0, 0, 1, 1] = 1  # the centre pixel: only pixels after it in raster order may change
    changed = (model.context_logits(first) != model.context_logits(torch.zeros_like(first)))[0, 0]
    assert not changed.flatten()[:5].any() and changed.flatten()[5:].any()


def test_autoregressive_vae_trains_and_renders_its_mean_field():
    model = _vae(arch="conv", autoregressive=True)
    assert model.context.weight.abs().sum() == 0  # starts as the factorized model
    x = torch.bernoulli(torch.full((N, 1, 28, 28), 0.3))
    loss, stats = model.loss(x)
    loss.backward()
    assert torch.isfinite(loss) and model.context.weight.grad.abs().sum() > 0
    with torch.no_grad():
        model.context.weight.normal_(0, 0.3)
    params = model.decode(torch.randn(N, 4))
    mean = model.mean_image(params)
    assert torch.allclose(mean, torch.sigmoid(params + model.context_logits(mean)), atol=1e-3)  # a fixed point
    assert model.sample(4, seed=3).equal(model.sample(4, seed=3))
    with pytest.raises(ValueError, match="bernoulli"):
        VAEConfig(autoregressive=True, likelihood="gaussian")


@pytest.mark.parametrize("make", [
    lambda: _gan(arch="dcgan", conditional=True, spectral_norm=True),
    lambda: _gan(arch="mlp", conditional=True, conditioning="concat"),
    lambda: _vae(arch="conv", likelihood="gaussian", conditional=True),
    lambda: _vae(arch="mlp", hidden=[]),
    lambda: _vae(arch="conv", autoregressive=True),
], ids=["dcgan-sn", "mlp-gan", "conv-vae", "linear-vae", "autoregressive-vae"])
def test_save_then_load_gives_the_same_samples(make, tmp_path):
    from safetensors.torch import load_file, save_file

    model = make()
    if isinstance(model, GAN):  # move BatchNorm running statistics and spectral-norm vectors off their init
        model.g_loss(model.generate(model.noise(N), _labels()), _labels())
    if getattr(model, "context", None) is not None:  # it starts at zero, which a fresh model would match
        torch.nn.init.normal_(model.context.weight, 0, 0.3)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "model.safetensors")
    torch.manual_seed(1)
    other = type(model)(model.cfg, model.input_shape, model.num_classes)
    other.load_state_dict(load_file(tmp_path / "model.safetensors"))
    assert torch.equal(model.sample(6, seed=0), other.sample(6, seed=0))


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_a_vae_on_tabular_data_is_refused_before_training(likelihood, tmp_path):
    from genforge import rundir
    from genforge.config import load_config
    from genforge.training import train

    cfg = load_config("blobs-logreg", [f"model={{kind: vae, arch: mlp, likelihood: {likelihood}}}", "train.threads=1",
                                       "train.epochs=1"])
    run = rundir.create_run(tmp_path, "tabular-vae", cfg)
    with pytest.raises(GenforgeError, match="model.kind=vae needs images but blobs is tabular"):
        train(cfg, run, quiet=True)
    assert not (run / "metrics.jsonl").exists()  # refused before the first step, not after the first epoch
