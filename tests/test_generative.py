"""Generators end to end on real Fashion-MNIST slices, through the CLI: train, sample (seeded), interpolate,
reconstruct, evaluate (calibration and provenance), and the divergence guard."""

import json

import numpy as np
import pytest
import torch
from helpers import QUICK_GENERATOR, run_cli

from genforge import rundir, runs
from genforge.data import load_dataset
from genforge.evaluate.features import load_evaluator
from genforge.evaluate.generative import frechet_distance

pytestmark = pytest.mark.usefixtures("fashion_available")

QUICK = QUICK_GENERATOR


@pytest.fixture
def cli(evaluator_cache, capsys, monkeypatch):
    """cli(*args) -> (exit code, stdout, stderr) of `genforge ARGS` in this process, with the cheap evaluator."""
    monkeypatch.setenv("GENFORGE_CACHE", str(evaluator_cache))
    return lambda *args: run_cli(capsys, monkeypatch, *args)


def test_gan_run_has_samples_scores_and_report(gan_run):
    summary = rundir.read_json(gan_run / "summary.json")
    assert summary["status"] == "complete" and summary["kind"] == "gan"
    assert summary["fd"] > 0 and 0 <= summary["conditional_accuracy"] <= 1
    assert (gan_run / "samples" / "epoch-001.png").is_file() and (gan_run / "plots" / "samples.png").is_file()
    result = json.loads((gan_run / "eval.json").read_text())
    assert result["provenance"]["n"] == 300 and len(result["provenance"]["evaluator"]) == 16
    assert sum(result["class_histogram"]) == 300
    assert "Scores" in (gan_run / "report.html").read_text()


def test_sample_is_seeded_and_writes_uint8(gan_run, cli, tmp_path):
    for name in ("a.npy", "b.npy", "c.npy"):
        seed = "7" if name != "c.npy" else "8"
        code, _, err = cli("sample", str(gan_run), "-n", "10", "--label", "3", "--seed", seed,
                           "--out", str(tmp_path / name))
        assert code == 0, err
    a, b, c = (np.load(tmp_path / n) for n in ("a.npy", "b.npy", "c.npy"))
    assert a.shape == (10, 28, 28) and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    loaded = runs.load_run(gan_run)
    assert np.array_equal(loaded.sample(10, label=3, seed=7).numpy()[:, 0], a)  # the Python API agrees


def test_interpolate_and_user_errors(gan_run, cli, tmp_path):
    code, _, err = cli("interpolate", str(gan_run), "--from-label", "0", "--to-label", "7", "--steps", "6",
                       "--out", str(tmp_path / "walk.png"))
    assert code == 0, err
    from PIL import Image

    with Image.open(tmp_path / "walk.png") as walk:  # six 28x28 steps side by side
        assert walk.width >= 6 * 28 and 28 <= walk.height < 2 * 28 + 16 and len(np.unique(np.asarray(walk))) > 2
    for args, message in [(["sample", str(gan_run), "--label", "12"], "out of range"),
                          (["sample", str(gan_run), "--out", str(tmp_path / "x.gif")], "use a .png"),
                          (["reconstruct", str(gan_run), str(tmp_path / "walk.png")], "cannot reconstruct"),
                          (["predict", str(gan_run), str(tmp_path / "walk.png")], "not a classifier"),
                          (["interpolate", str(gan_run), "--from-label", "11", "--out", str(tmp_path / "w.png")],
                           "the from label 11 is out of range 0-9")]:
        code, _, err = cli(*args)
        assert code == 2 and message in err and "Traceback" not in err


def test_evaluate_prints_calibration_that_matches_a_direct_computation(gan_run, cli):
    code, out, err = cli("evaluate", str(gan_run), "--seeds", "2", "--samples", "300", "--json")
    assert code == 0, err
    scores = json.loads(out)
    assert scores["fd"]["n"] == 2 and scores["fd"]["sd"] >= 0
    cal = scores["calibration"]
    assert cal["fd_train_vs_test"] * 5 < cal["fd_noise_vs_test"]  # real images sit far closer than noise

    ds = load_dataset("fashion-mnist", progress=False)
    evaluator = load_evaluator(ds)  # the cheap one: cli set GENFORGE_CACHE to evaluator_cache
    assert evaluator.hash == scores["provenance"]["evaluator"]
    train = ds.train_x[torch.randperm(len(ds.train_x), generator=torch.Generator().manual_seed(0))[:300]]
    a, b = evaluator.features(train).double().numpy(), evaluator.features(ds.test_x[:300]).double().numpy()
    from scipy.linalg import sqrtm

    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    direct = ((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(sa + sb - 2 * sqrtm(sa @ sb).real)
    assert cal["fd_train_vs_test"] == pytest.approx(direct, rel=1e-4)
    assert frechet_distance(torch.from_numpy(a), torch.from_numpy(b)) == pytest.approx(direct, rel=1e-4)


def test_vae_run_reports_likelihoods_and_reconstructs(vae_run, cli, tmp_path):
    summary = rundir.read_json(vae_run / "summary.json")
    like = json.loads((vae_run / "eval.json").read_text())["likelihood"]
    assert like["iwae_k"] == 20 and like["nll_iwae"] > 0 and summary["nll_iwae"] == like["nll_iwae"]
    assert like["nll_iwae"] <= -like["test_elbo"] + 5  # the IWAE bound is no looser than the ELBO (up to noise)
    assert (vae_run / "plots" / "reconstructions.png").is_file()
    ds = load_dataset("fashion-mnist", progress=False)
    np.save(tmp_path / "four.npy", ds.test_x[:4, 0].numpy())
    code, out, err = cli("reconstruct", str(vae_run), str(tmp_path / "four.npy"), "--out", str(tmp_path / "r.png"))
    assert code == 0, err
    errors = [float(line.split("error ")[1].split(" /")[0]) for line in out.splitlines() if "error" in line]
    assert len(errors) == 4 and all(0 < e < 128 for e in errors)
    mu, logvar = runs.load_run(vae_run).encode(ds.test_x[:4])
    assert mu.shape == logvar.shape == (4, 32)


def test_diverging_gan_is_rolled_back_and_stops_with_finite_weights(cli, tmp_path):
    code, _, err = cli("train", "fashion-dcgan", *QUICK, "model.width=16", "train.lr=1e12", "train.d_lr=1e12",
                       "train.optimizer=sgd", "train.checkpoint_every=4", "train.max_nonfinite=2",
                       "train.max_rollbacks=2", "--runs-dir", str(tmp_path), "--quiet")
    assert code == 2, err
    assert "rolled back to the last checkpoint" in err and "lower train.d_lr" in err
    assert "Traceback" not in err
    (run,) = tmp_path.iterdir()
    state = rundir.load_state(run / rundir.CHECKPOINT)
    assert all(torch.isfinite(v).all() for v in state["step_fn"]["model"].values() if v.is_floating_point())
    assert rundir.read_json(run / "summary.json")["status"] == "diverged"
    kept = runs.load_run(run)  # the last good weights, usable like any run's
    assert all(torch.isfinite(v).all() for v in kept.model.state_dict().values() if v.is_floating_point())
    assert kept.sample(4, label=None if not kept.model.cfg.conditional else 1, seed=0).shape == (4, 1, 28, 28)
