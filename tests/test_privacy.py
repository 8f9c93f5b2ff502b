"""Differentially private training on real Fashion-MNIST images: the epsilon reported is the accountant's for the
recorded noise, sample rate and steps; a fixed noise under a cap stops at the budget; per-sample clipping bounds an
update; batches are Poisson samples; a killed private run resumes to the same weights and epsilon; and what cannot
train privately is refused in one line."""

import json

import numpy as np
import pytest
import torch
from test_resume import assert_same_tree, killed_and_uninterrupted

from genforge import rundir, runs
from genforge.config import load_config
from genforge.errors import GenforgeError
from genforge.train.privacy import default_delta
from genforge.training import train

pytestmark = pytest.mark.usefixtures("fashion_available")  # real Fashion-MNIST, never downloaded by a test

SMALL = ["data.train_subset=1024", "data.val_fraction=0.1", "model.kind=mlp", "model.hidden=[64]",
         "train.threads=1", "train.batch_size=64", "train.epochs=2"]


def _train(tmp_path, *overrides):
    cfg = load_config("fashion-cnn-fast", [*SMALL, *overrides])
    run_dir = rundir.create_run(tmp_path, cfg.name, cfg)
    return run_dir, train(cfg, run_dir, quiet=True)


def _epsilon(accountant: str, noise: float, rate: float, steps: int, delta: float) -> float:
    from opacus.accountants import create_accountant

    acc = create_accountant(mechanism=accountant)
    acc.history = [(noise, rate, steps)]
    return acc.get_epsilon(delta)


@pytest.fixture(scope="module")
def private_run(tmp_path_factory):
    return _train(tmp_path_factory.mktemp("dp"), "train.privacy.epsilon=2")


def test_the_reported_epsilon_is_the_accountants_for_the_recorded_noise_rate_and_steps(private_run):
    run_dir, summary = private_run
    p = summary["privacy"]
    n = rundir.read_json(run_dir / "meta.json")["n_train"]
    assert n == 1024  # the subset; validation comes from the rest of the training file
    assert p["sample_rate"] == pytest.approx(64 / n) and p["steps"] == 2 * (n // 64) == summary["steps"]
    assert p["delta"] == default_delta(n) == 1e-4 and p["accountant"] == "prv"
    recomputed = _epsilon("prv", p["noise_multiplier"], p["sample_rate"], p["steps"], p["delta"])
    assert p["epsilon"] == pytest.approx(recomputed, abs=1e-4)
    assert 1.9 <= p["epsilon"] <= 2.0  # the least noise that keeps the planned steps within the budget
    epochs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    spent = [e["epsilon"] for e in epochs if "epsilon" in e]
    assert len(spent) == 2 and 0 < spent[0] < spent[1] == pytest.approx(p["epsilon"], abs=1e-4)


def test_the_report_and_the_card_state_the_guarantee(private_run):
    from genforge.serve.adapters import load_models

    run_dir, summary = private_run
    page = (run_dir / "report.html").read_text()
    assert "<h2>Privacy</h2>" in page and "differentially private" in page
    assert (run_dir / "plots" / "privacy_spent.png").is_file()
    (served,) = load_models([run_dir], backend="torch").values()
    assert served.card()["privacy"]["epsilon"] == summary["privacy"]["epsilon"]
    assert served.card()["privacy"]["delta"] == 1e-4


def test_the_report_shows_and_explains_test_images_only(private_run, tmp_path, monkeypatch):
    """Every image on the page is a plot, a test image (as the test set holds it) or attributions over one; and every
    input the report explains (the mistakes, the per-class averages) is a test image."""
    import base64
    import io
    import re
    import shutil

    from PIL import Image

    from genforge import explain
    from genforge.evaluate import evaluate
    from genforge.evaluate.report import write_classifier_report

    run_dir, summary = private_run
    run = runs.load_run(run_dir)
    ds = run.task.dataset(run.config)
    page = (run_dir / "report.html").read_text()
    images = re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,([^"]+)"', page)
    shown = [int(i) for alt, _ in images for i in re.findall(r"^test #(\d+)$", alt)]
    assert len(shown) == 12
    assert {alt for alt, _ in images} == {"curves", "confusion", "privacy_spent", "class attributions",
                                           *(f"{kind} #{i}" for kind in ("test", "attributions") for i in shown)}
    for alt, data in images:
        if alt.startswith("test #"):
            image = torch.from_numpy(np.array(Image.open(io.BytesIO(base64.b64decode(data)))))
            assert torch.equal(image[::4, ::4], ds.test_x[int(alt[6:]), 0])

    explained, call = [], explain.Explainer.__call__

    def spy(self, x, *args, **kwargs):
        explained.append(x)
        return call(self, x, *args, **kwargs)

    monkeypatch.setattr(explain.Explainer, "__call__", spy)
    copy = shutil.copytree(run_dir, tmp_path / run_dir.name)
    write_classifier_report(copy, run.model, ds, evaluate(run.model, ds.test_x, ds.test_y, ds.classes), summary)
    test_images = {bytes(row.numpy()) for row in ds.test_x}
    rows = torch.cat(explained)
    assert len(rows) == 12 + 10 * 20 and all(bytes(row.numpy()) in test_images for row in rows)


@pytest.mark.slow
def test_a_fixed_noise_under_a_cap_stops_at_the_budget(tmp_path):
    run_dir, summary = _train(tmp_path, "train.privacy.noise_multiplier=1.0", "train.privacy.epsilon=2.5",
                              "train.epochs=10")
    p = summary["privacy"]
    planned = 10 * (1024 // 64)
    assert p["steps"] == summary["steps"] < planned  # stopped early
    assert p["epsilon"] <= 2.5 < _epsilon("prv", 1.0, p["sample_rate"], p["steps"] + 1, p["delta"])


def test_per_sample_clipping_bounds_one_update(tmp_path):
    """Plain SGD with lr 1 and next to no noise: the update is the mean of clipped per-sample gradients, so its norm
    cannot exceed the clipping bound, while the same batch's unclipped gradient is far larger."""
    cfg = load_config("fashion-cnn-fast", [*SMALL, "train.optimizer=sgd", "train.momentum=0", "train.lr=1",
                                           "train.weight_decay=0", "train.schedule=none",
                                           "train.privacy.noise_multiplier=1e-6", "train.privacy.max_grad_norm=0.01",
                                           "train.epochs=1"])
    from genforge.data import load_dataset
    from genforge.models.catalogue import build_model
    from genforge.tasks.classify import TASK
    from genforge.train.privacy import Privacy

    torch.manual_seed(0)
    ds = load_dataset(cfg.data.name)
    x, y = ds.train_x[:128], ds.train_y[:128]
    model = build_model(cfg.model, ds.input_shape, len(ds.classes), torch.zeros(1), torch.ones(1))
    plain = model.loss(model(x.float()), y, 0.0)
    full_norm = torch.cat([g.flatten() for g in torch.autograd.grad(plain, list(model.parameters()))]).norm()
    step = TASK.step(model, cfg, 1, autocast=False, channels_last=False)
    Privacy(step, cfg.train.privacy, n=len(x), batch_size=len(x), planned_steps=1, kind="mlp")
    before = [p.detach().clone() for p in model.parameters()]
    assert step(x, y) is not None
    update = torch.cat([(p.detach() - b).flatten() for p, b in zip(model.parameters(), before)]).norm()
    assert update <= 0.01 * 1.0001 and full_norm > 10 * update


def test_batches_are_poisson_samples():
    from types import SimpleNamespace

    from genforge.config import PrivacyConfig
    from genforge.train.privacy import Privacy

    model = torch.nn.Linear(3, 2)
    step = SimpleNamespace(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    privacy = Privacy(step, PrivacyConfig(noise_multiplier=1.0), n=10_000, batch_size=100, planned_steps=50,
                      kind="logreg")
    sizes = [len(privacy.draw(0, 0, b, "cpu")) for b in range(50)]
    assert len(set(sizes)) > 5 and 90 < sum(sizes) / len(sizes) < 110  # variable, about batch_size on average
    assert torch.equal(privacy.draw(0, 3, 7, "cpu"), privacy.draw(0, 3, 7, "cpu"))  # a resume draws the same


@pytest.mark.parametrize("overrides, message", [
    (["model.kind=fastcnn", "model.norm=batch"], "set model.norm=group"),
    (["model.kind=gan"], "model.kind=gan cannot train privately"),
])
def test_models_that_cannot_train_privately_are_refused_at_config_time(overrides, message):
    with pytest.raises(GenforgeError, match=message):
        load_config("fashion-cnn-fast", ["train.privacy.epsilon=3", *overrides])


def test_a_budget_too_small_for_any_step_is_one_line(tmp_path):
    with pytest.raises(GenforgeError, match="too small for 32 steps"):
        _train(tmp_path, "train.privacy.epsilon=0.001")
    with pytest.raises(GenforgeError, match="give train.privacy.epsilon"):
        load_config("fashion-cnn-fast", ["train.privacy.max_grad_norm=1"])


@pytest.mark.slow
def test_a_killed_private_run_resumes_to_the_same_weights_and_epsilon(tmp_path):
    exact = [*SMALL, "train.privacy.epsilon=2", "train.epochs=3", "train.checkpoint_every=5", "deterministic=true"]
    reference, run = killed_and_uninterrupted(tmp_path, "fashion-cnn-fast", exact, 20)
    from safetensors.torch import load_file

    assert_same_tree(load_file(reference / rundir.WEIGHTS), load_file(run / rundir.WEIGHTS))
    assert rundir.read_json(run / "summary.json")["privacy"] == rundir.read_json(reference / "summary.json")["privacy"]


def test_the_epsilon_bound_of_an_attack_follows_its_rates():
    from genforge.evaluate.privacy import epsilon_lower_bound, roc_summary

    rng = np.random.default_rng(0)
    same = epsilon_lower_bound(rng.normal(size=1000), rng.normal(size=1000), 1e-5)
    apart = epsilon_lower_bound(rng.normal(10, 1, 1000), rng.normal(size=1000), 1e-5)
    assert same < 0.5 and apart > 4  # chance shows nothing; a perfect attack on 500 + 500 test examples shows a lot
    assert roc_summary(rng.normal(10, 1, 100), rng.normal(size=100))["auc"] == 1.0


@pytest.mark.slow
def test_the_audit_finds_an_overfit_model_and_not_a_private_one(tmp_path, capsys, monkeypatch):
    from helpers import run_cli

    overfit = ["model.hidden=[256]", "data.train_subset=500", "train.batch_size=50", "train.weight_decay=0",
               "model.dropout=0"]
    open_dir, _ = _train(tmp_path, *overfit, "train.epochs=60", "name=open")
    private_dir, summary = _train(tmp_path, *overfit, "train.epochs=10", "train.privacy.epsilon=1", "name=private")
    code, out, err = run_cli(capsys, monkeypatch, "evaluate", str(private_dir), "--privacy-audit", "--against",
                             str(open_dir), "--examples", "500", "--json")
    assert code == 0, err
    private, open_ = json.loads(out)
    assert open_["attacks"]["loss"]["auc"] > 0.7 and open_["attacks"]["loss"]["epsilon_lower_bound"] > 1
    assert private["accounted_epsilon"] == summary["privacy"]["epsilon"] <= 1
    for attack in private["attacks"].values():
        assert abs(attack["auc"] - 0.5) < 0.08  # close to a coin
        assert attack["epsilon_lower_bound"] <= private["accounted_epsilon"]  # else the accounting has a bug
    assert rundir.read_json(private_dir / "audit.json") == private


@pytest.mark.parametrize("args, inherited", [(["--quantize", "int8"], True),
                                             (["--prune", "0.5", "--finetune-epochs", "1"], False)])
def test_a_compressed_private_model_keeps_its_guarantee(private_run, tmp_path, capsys, monkeypatch, args, inherited):
    from helpers import run_cli

    from genforge.serve.adapters import load_models

    run_dir, summary = private_run
    code, _, err = run_cli(capsys, monkeypatch, "compress", str(run_dir), *args, "--runs-dir", str(tmp_path))
    assert code == 0, err
    (child,) = tmp_path.iterdir()
    privacy = rundir.read_json(child / "summary.json")["privacy"]
    if inherited:  # quantization is post-processing: the parent's epsilon stands
        assert privacy["epsilon"] == summary["privacy"]["epsilon"]
    else:  # the private fine-tuning read the data again: both trainings, composed
        assert privacy["epsilon"] > max(summary["privacy"]["epsilon"], privacy["fine_tuning_epsilon"])
    (served,) = load_models([child], backend="auto").values()
    assert served.card()["privacy"]["epsilon"] == privacy["epsilon"]


def test_a_private_model_holds_no_statistic_of_its_training_data(private_run):
    model = runs.load_run(private_run[0]).model
    assert torch.all(model.normalize.mean == 0.5) and torch.all(model.normalize.std == 0.5)  # pixels to [-1, 1]
