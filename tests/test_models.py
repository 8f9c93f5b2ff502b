"""Per-kind tests, parametrized over the registry: build, forward shape, save -> load -> same output, one finite
training step, and for generators: the same seed gives the same samples after a round trip, shape and dtype; for
forecasters: quantiles that do not cross, in the history's units."""

import pytest
import torch

from genforge.config import RunConfig
from genforge.models.catalogue import build_model
from genforge.registry import MODELS
from genforge.rundir import load_weights, save_weights

IMAGE = (1, 28, 28)
FEATURES = (2,)
CLASSIFIERS = [k for k, s in MODELS.items() if "classify" in s.task.verbs]
GENERATORS = [k for k, s in MODELS.items() if "generate" in s.task.verbs]
FORECASTERS = [k for k, s in MODELS.items() if "forecast" in s.task.verbs]
LANGUAGE = [k for k, s in MODELS.items() if "complete" in s.task.verbs]
CONTEXT, HORIZON = 16, 4
SMALL = {"gan": {"width": 16, "latent_dim": 8, "conditional": True}, "vae": {"width": 8, "latent_dim": 4},
         "rowrnn": {"hidden": 16}, "rnn": {"hidden": 8, "cell": "gru", "season": 4},
         **{k: {"context": CONTEXT, "horizon": HORIZON} for k in FORECASTERS}}
SMALL["rnn"] = {**SMALL["rnn"], "context": CONTEXT, "horizon": HORIZON}
SMALL |= {k: {"layers": 1, "heads": 2, "width": 16, "context": CONTEXT, "vocab_size": 256, "end_token": 30}
          for k in LANGUAGE}
for k in FORECASTERS:
    if k != "rnn":
        SMALL[k] = {**SMALL[k], "season": 4}


def _shape(kind):
    if kind in FORECASTERS or kind in LANGUAGE:
        return (CONTEXT,)
    return IMAGE if MODELS[kind].image_only or kind in ("mlp", "vae") else FEATURES


def _targets(kind, n):
    if kind in FORECASTERS:
        return torch.randn(n, HORIZON) + 10
    if kind in LANGUAGE:  # the next token at each position
        return torch.randint(0, 256, (n, CONTEXT), dtype=torch.uint8)
    return torch.randint(0, 10, (n,))


def _make(kind, num_classes=10, seed=0):
    torch.manual_seed(seed)
    shape = _shape(kind)
    mean = torch.full((1, 1, 1), 0.3) if len(shape) == 3 else torch.zeros(shape)
    std = torch.full((1, 1, 1), 0.3) if len(shape) == 3 else torch.ones(shape)
    cfg = MODELS[kind].config(**SMALL.get(kind, {}))
    return build_model(cfg, shape, num_classes, mean, std), shape


def _inputs(shape, n=8):
    if len(shape) == 3:
        return torch.randint(0, 256, (n, *shape), dtype=torch.uint8)
    if shape == (CONTEXT,):  # a history: a seasonal level with noise
        t = torch.arange(CONTEXT, dtype=torch.float32)
        return 10 + torch.sin(t * torch.pi / 2) + 0.3 * torch.randn(n, CONTEXT)
    return torch.randn(n, *shape)


@pytest.mark.parametrize("kind", FORECASTERS)
def test_forecasters_give_ordered_quantiles_in_the_history_units(kind):
    model, shape = _make(kind)
    history = _inputs(shape)
    q = model.eval()(history)
    assert q.shape == (8, HORIZON, len(model.cfg.quantiles))
    assert (q.diff(dim=-1) >= 0).all()  # quantiles never cross
    shifted = model(history + 1000.0)  # the model scales each history itself: a shifted level shifts the forecast
    torch.testing.assert_close(shifted - 1000.0, q, atol=2e-3, rtol=0)


@pytest.mark.parametrize("kind", FORECASTERS)
def test_forecasters_save_then_load_gives_the_same_output(kind, tmp_path):
    model, shape = _make(kind, seed=0)
    if hasattr(model, "widen"):
        model.widen.uniform_(-0.5, 0.5)  # the calibrated widths are part of the saved state
    x = _inputs(shape)
    save_weights(model, tmp_path / "model.safetensors")
    other, _ = _make(kind, seed=1)
    load_weights(other, tmp_path / "model.safetensors")
    torch.testing.assert_close(model.eval()(x), other.eval()(x), rtol=0, atol=0)


@pytest.mark.parametrize("kind", CLASSIFIERS)
def test_forward_shape_and_probabilities(kind):
    model, shape = _make(kind)
    logits = model.eval()(_inputs(shape))
    probs = model.probabilities(logits)
    assert probs.shape == (8, 10)
    torch.testing.assert_close(probs.sum(1), torch.ones(8))


def test_binary_logreg_is_one_sigmoid_unit():
    model, shape = _make("logreg", num_classes=2)
    assert model.binary and model(_inputs(shape)).shape == (8, 1)
    assert model.probabilities(model(_inputs(shape))).shape == (8, 2)


@pytest.mark.parametrize("kind", CLASSIFIERS)
def test_save_then_load_gives_the_same_output(kind, tmp_path):
    model, shape = _make(kind, seed=0)
    x = _inputs(shape)
    path = tmp_path / "model.safetensors"
    save_weights(model, path)
    other, _ = _make(kind, seed=1)
    load_weights(other, path)
    torch.testing.assert_close(model.eval()(x), other.eval()(x), rtol=0, atol=0)


@pytest.mark.parametrize("kind", GENERATORS)
def test_generator_samples_survive_a_round_trip(kind, tmp_path):
    model, shape = _make(kind, seed=0)
    step = MODELS[kind].task.step(model, RunConfig.model_validate({"model": {"kind": kind, **SMALL[kind]}}),
                                         steps_per_epoch=4, autocast=False, channels_last=False)
    step(_inputs(shape, 16), torch.randint(0, 10, (16,)))  # non-trivial BatchNorm statistics and weights
    samples = model.sample(12, seed=5)
    assert samples.shape == (12, *shape) and samples.dtype == torch.uint8
    assert torch.equal(samples, model.sample(12, seed=5))
    assert not torch.equal(samples, model.sample(12, seed=6))
    save_weights(model, tmp_path / "model.safetensors")
    other, _ = _make(kind, seed=1)
    load_weights(other, tmp_path / "model.safetensors")
    assert torch.equal(samples, other.sample(12, seed=5))


@pytest.mark.parametrize("kind", list(MODELS))
def test_one_training_step_is_finite_and_changes_weights(kind):
    model, shape = _make(kind)
    cfg = RunConfig.model_validate({"model": {"kind": kind, **SMALL.get(kind, {})}, "train": {"epochs": 1}})
    step = MODELS[kind].task.step(model, cfg, steps_per_epoch=4, autocast=False, channels_last=False)
    before = [p.detach().clone() for p in model.parameters()]
    x = torch.randint(0, 256, (16, CONTEXT), dtype=torch.uint8) if kind in LANGUAGE else _inputs(shape, 16)
    metrics = step(x, _targets(kind, 16))
    assert metrics is not None and all(torch.isfinite(torch.tensor(v)) for v in metrics.values())
    if before:  # a baseline has nothing to train: its step only scores the batch
        assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    else:
        assert kind in FORECASTERS and set(metrics) == {"loss"}


def test_nan_weights_are_never_saved(tmp_path):
    model, _ = _make("mlp")
    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))
    with pytest.raises(RuntimeError, match="non-finite"):
        save_weights(model, tmp_path / "m.safetensors")
    assert not (tmp_path / "m.safetensors").exists()


def test_the_scattering_transform_is_a_wavelet_transform():
    """81 channels at a quarter of the side; wavelets of zero mean (a flat image has only its low-pass left); stable
    to a one-pixel shift that changes the pixels a lot; the low-pass matrices equal a reflect-padded convolution."""
    import torch.nn.functional as F

    from genforge.models.scattering import Scattering, _low_pass_matrix

    s = Scattering(8, (28, 28))
    x = torch.rand(4, 1, 28, 28)
    out = s(x)
    assert out.shape == (4, 81, 7, 7)
    flat = s(torch.full((1, 1, 28, 28), 0.7))
    assert flat[:, 1:].abs().max() < 1e-3 * flat[:, 0].abs().min()  # orders 1 and 2 see no edges in a flat image
    blob = torch.zeros(1, 1, 28, 28)
    blob[..., 10:18, 9:17] = 1
    shifted = torch.roll(blob, 1, 3)
    assert (s(shifted) - s(blob)).norm() / s(blob).norm() < 0.35 * (shifted - blob).norm() / blob.norm()
    g = torch.exp(-torch.arange(-5.0, 6.0) ** 2 / 8)
    signal = torch.randn(3, 28)
    conv = F.conv1d(F.pad(signal[:, None], (5, 5), mode="reflect"), g.view(1, 1, -1), stride=2)[:, 0]
    torch.testing.assert_close(signal @ _low_pass_matrix(g, 28, 2).T, conv)
