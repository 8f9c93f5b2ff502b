"""Transfer learning: a class subset and a label budget, train.init_from with a new head, frozen layers that really do
not change (BatchNorm statistics included), a later unfreeze at a smaller learning rate, exact resume, and the
one-line errors."""

import re
from pathlib import Path

import pytest
import torch
from helpers import run_cli, train_run
from safetensors.torch import load_file

from genforge import rundir
from genforge.config import load_config
from genforge.data import labelled_subset, load_dataset, select_classes
from genforge.errors import GenforgeError
from genforge.models.catalogue import build_model
from genforge.registry import task_of
from genforge.tasks.classify import ClassifyTask
from genforge.train.transfer import start_transfer
from genforge.training import train

pytestmark = pytest.mark.usefixtures("fashion_available")

SMALL = ["train.threads=1", "model={kind: fastcnn, channels: [8, 16]}", "train.batch_size=64"]
FIRST, SECOND = "data.classes=[0,1,2,3,4]", "data.classes=[5,6,7,8,9]"
HEAD = "net.8."  # fastcnn [8, 16]: conv, pool, conv, conv, pool, global pool, flatten, dropout, the head


@pytest.fixture(scope="module", autouse=True)
def no_report():
    """The report (plots, the worst mistakes' attributions) is test_tasks' and test_explain's subject: here it would
    only double the time of every run."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ClassifyTask, "report", lambda self, *args, **kwargs: None)
        yield


@pytest.fixture(scope="module")
def parent(tmp_path_factory, no_report) -> Path:
    """A small CNN trained one epoch on 1,024 images of classes 0-4."""
    return train_run(tmp_path_factory.mktemp("parent"), "fashion-cnn-fast", *SMALL, FIRST, "data.train_subset=1024",
                     "train.epochs=1")


@pytest.fixture(scope="module")
def fashion():
    return load_dataset("fashion-mnist", progress=False)


def test_a_class_subset_keeps_train_and_test_of_those_classes_relabelled_in_order(fashion):
    ds = select_classes(fashion, [7, "Sandal"])
    assert ds.classes == ["Sneaker", "Sandal"]
    assert torch.bincount(ds.train_y).tolist() == [6000, 6000] and torch.bincount(ds.test_y).tolist() == [1000, 1000]
    first_sneaker = torch.nonzero(fashion.train_y == 7)[0, 0]
    assert torch.equal(ds.train_x[ds.train_y == 0][0], fashion.train_x[first_sneaker])
    with pytest.raises(GenforgeError, match=r"'Sandle' is not a class of fashion-mnist.*5=Sandal"):
        select_classes(fashion, ["Sandle", 1])


def test_labels_per_class_is_stratified_seeded_and_nested(fashion):
    small, large = (labelled_subset(fashion.train_y, n, 3, fashion.classes) for n in (10, 100))
    assert torch.bincount(fashion.train_y[small]).tolist() == [10] * 10
    assert torch.bincount(fashion.train_y[large]).tolist() == [100] * 10
    assert set(small.tolist()) <= set(large.tolist())  # more labels with the same seed add to the fewer ones
    assert torch.equal(small, labelled_subset(fashion.train_y, 10, 3, fashion.classes))
    assert set(small.tolist()) != set(labelled_subset(fashion.train_y, 10, 4, fashion.classes).tolist())
    with pytest.raises(GenforgeError, match="labels_per_class=7000: class 'T-shirt/top' has only 6000"):
        labelled_subset(fashion.train_y, 7000, 0, fashion.classes)


def test_the_label_budget_holds_the_validation_split_and_both_follow_the_classes():
    cfg = load_config("fashion-cnn-fast", [SECOND, "data.labels_per_class=20", "data.val_fraction=0.1"])
    task = task_of(cfg.model.kind)
    ds = task.dataset(cfg)
    data = task.prepare(cfg, ds, torch.device("cpu"))
    assert data.meta["classes"] == ["Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"] and data.num_classes == 5
    assert torch.bincount(data.y).tolist() == [18] * 5 and torch.bincount(data.y_val).tolist() == [2] * 5
    assert len(ds.test_y) == 5000 and int(ds.test_y.max()) == 4


def test_the_head_is_new_when_the_classes_differ_and_loaded_when_they_match(parent, tmp_path):
    theirs = load_file(parent / rundir.WEIGHTS)
    for classes, head_loaded in ((FIRST, True), (SECOND, False)):
        cfg = load_config("fashion-cnn-fast", [*SMALL, classes, f"train.init_from={parent}"])
        zeros = torch.zeros(1, 1, 1)
        model = build_model(cfg.model, (1, 28, 28), 5, zeros, zeros + 1)
        names = task_of("fastcnn").dataset(cfg).classes
        transfer = start_transfer(cfg, model, names, tmp_path, resume=False)
        own = model.state_dict()
        assert all(torch.equal(own[k], theirs[k]) for k in own if not k.startswith(HEAD))  # normalization too
        assert torch.equal(own[f"{HEAD}weight"], theirs[f"{HEAD}weight"]) is head_loaded
        assert (transfer.head is None) is head_loaded
        assert transfer.new == ([] if head_loaded else [f"{HEAD}weight", f"{HEAD}bias"])


def test_frozen_layers_and_their_batchnorm_statistics_do_not_change(parent, tmp_path):
    child = train_run(tmp_path, "fashion-cnn-fast", *SMALL, SECOND, "data.labels_per_class=40", "train.epochs=2",
                      f"train.init_from={parent}", "train.freeze=[pretrained]", "data.augment.flip=true")
    before, after = load_file(parent / rundir.WEIGHTS), load_file(child / rundir.WEIGHTS)
    frozen = [k for k in after if not k.startswith(HEAD)]
    assert any("running_mean" in k for k in frozen) and any("num_batches_tracked" in k for k in frozen)
    for k in frozen:
        assert torch.equal(before[k], after[k]), k
    assert not torch.equal(before[f"{HEAD}weight"], after[f"{HEAD}weight"])  # only the new head trained
    summary = rundir.read_json(child / "summary.json")
    assert "new net.8 for 5 classes (Sandal" in summary["transfer"]["head"]
    assert summary["transfer"]["normalization"] == "the run's (kept)"
    assert rundir.read_json(child / "meta.json")["transfer"]["new"] == [f"{HEAD}weight", f"{HEAD}bias"]


def test_unfreeze_epoch_trains_the_frozen_layers_later_at_the_scaled_rate(parent, tmp_path):
    cfg = load_config("fashion-cnn-fast", [*SMALL, SECOND, "data.labels_per_class=40", "train.epochs=2",
                                           "data.val_fraction=0", f"train.init_from={parent}", "train.freeze=[net.0]",
                                           "train.unfreeze_epoch=2", "train.pretrained_lr_scale=0.1"])
    first = load_file(parent / rundir.WEIGHTS)["net.0.0.weight"]
    seen = []

    def record(step, t: int, total: int) -> None:
        weight = step.model.state_dict()["net.0.0.weight"]
        seen.append((t, torch.equal(weight, first), [group["lr"] for group in step.optimizer.param_groups]))

    train(cfg, rundir.create_run(tmp_path, cfg.name, cfg), quiet=True, on_step=record)
    per_epoch = len(seen) // 2  # 200 images at batch 64: 3 steps an epoch
    assert all(same for _, same, _ in seen[:per_epoch]) and not seen[-1][1]
    assert all(lrs[1] == pytest.approx(0.1 * lrs[0]) for _, _, lrs in seen)  # new head at lr, pretrained at 0.1 lr


def test_a_fine_tuning_killed_mid_run_resumes_exactly(parent, tmp_path, capsys, monkeypatch):
    args = [*SMALL, SECOND, "data.labels_per_class=60", "train.epochs=3", "deterministic=true", "seed=2",
            "train.checkpoint_every=2", f"train.init_from={parent}", "train.freeze=[pretrained]",
            "train.unfreeze_epoch=2", "train.pretrained_lr_scale=0.1", "train.ema=0.9"]
    reference = train_run(tmp_path / "a", "fashion-cnn-fast", *args)

    class Killed(Exception):
        pass

    def kill(step, t: int, total: int) -> None:
        if t == 3:  # in the first, frozen epoch (4 steps of 64 of 285 images); the checkpoint holds step 2
            raise Killed

    cfg = load_config("fashion-cnn-fast", args)
    run = rundir.create_run(tmp_path / "b", cfg.name, cfg)
    with pytest.raises(Killed):
        train(cfg, run, quiet=True, on_step=kill)
    assert rundir.load_state(run / rundir.CHECKPOINT)["loop"]["step"] == 2
    code, _, err = run_cli(capsys, monkeypatch, "train", "--resume", run, "--quiet")
    assert code == 0, err
    assert "resumed at epoch 1, batch 2" in err
    expected, resumed = load_file(reference / rundir.WEIGHTS), load_file(run / rundir.WEIGHTS)
    assert expected.keys() == resumed.keys() and all(torch.equal(expected[k], resumed[k]) for k in expected)
    summary, expected_summary = rundir.read_json(run / "summary.json"), rundir.read_json(reference / "summary.json")
    assert summary["transfer"] == expected_summary["transfer"]


def fake_vae_run(parent: Path) -> Path:
    """A VAE's run directory (untrained weights): enough for load_run."""
    cfg = load_config("fashion-vae", ["model.width=8"])
    run = rundir.create_run(parent, cfg.name, cfg)
    zeros = torch.zeros(1, 1, 1)
    rundir.save_weights(build_model(cfg.model, (1, 28, 28), 10, zeros, zeros + 1), run / rundir.WEIGHTS)
    rundir.write_json(run / "meta.json", {"input_shape": [1, 28, 28], "classes": [str(i) for i in range(10)],
                                        "norm_shape": [1, 1, 1], "task": "vae", "dataset": "fashion-mnist"})
    return run


@pytest.mark.parametrize("case, message", [
    ("unknown", r"train.init_from .*nope: .*nope is not a run directory \(no config.yaml\)"),
    ("vae", r"is a vae run: fine-tuning starts from a classifier's weights"),
    ("shape", r"10 tensors do not fit this model \(net.2.0.weight: \(16, 8, 3, 3\) in the run, \(32, 8, 3, 3\) here, "
              r".*build the run's model: model=\{kind: fastcnn, channels: \[8, 16\]"),
    ("prefix", r"train.freeze: 'net.99' matches no layer with weights; the model's layers: net.0.0 \(Conv2d\), "
               r"net.0.1 \(BatchNorm2d\), .*net.8 \(Linear\); or pretrained"),
])
def test_a_bad_parent_or_freeze_is_one_line_that_says_what_fits(case, message, parent, tmp_path, capsys, monkeypatch):
    source = tmp_path / "nope" if case == "unknown" else fake_vae_run(tmp_path) if case == "vae" else parent
    extra = {"shape": ["model.channels=[8, 32]"], "prefix": ["train.freeze=[net.99]"]}.get(case, [])
    code, _, err = run_cli(capsys, monkeypatch, "train", "fashion-cnn-fast", *SMALL, SECOND, "data.labels_per_class=10",
                           f"train.init_from={source}", *extra, "--runs-dir", tmp_path / "r", "--quiet")
    assert code == 2
    (line,) = [line for line in err.splitlines() if line.startswith("error:")]
    assert "Traceback" not in err
    assert re.search(message, line), line


@pytest.mark.parametrize("overrides, message", [
    (["train.unfreeze_epoch=2"], "train.unfreeze_epoch unfreezes what train.freeze froze: set train.freeze"),
    (["train.freeze=[net.0]", "train.unfreeze_epoch=9"], "train.unfreeze_epoch=9 comes after the last epoch (3)"),
    (["train.pretrained_lr_scale=0.1"], "train.pretrained_lr_scale is about the weights train.init_from loads"),
    (["train.freeze=[pretrained]"], "train.freeze=[pretrained] is about the weights train.init_from loads"),
    (["model.kind=vae", "data.classes=[1,2]"], "data.classes is for classifiers; model.kind=vae cannot take it"),
    (["data.classes=[1,1,2]"], "data.classes lists a class twice"),
    (["data.classes=[1]"], "config key 'data.classes'"),
    (["data.labels_per_class=0"], "config key 'data.labels_per_class'"),
])
def test_bad_transfer_settings_are_one_line_errors(overrides, message):
    with pytest.raises(GenforgeError) as info:
        load_config("fashion-cnn-fast", overrides)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_freezing_everything_is_refused(parent, tmp_path):
    with pytest.raises(GenforgeError, match=r"freezes every parameter: nothing would train"):
        train_run(tmp_path, "fashion-cnn-fast", *SMALL, FIRST, "data.labels_per_class=10",
                  f"train.init_from={parent}", "train.freeze=[pretrained]")


def test_a_private_fine_tuning_of_the_head_leaves_the_frozen_layers_alone(tmp_path):
    group = ["model.norm=group", "data.train_subset=512", "train.epochs=1"]
    parent = train_run(tmp_path / "a", "fashion-cnn-fast", *SMALL, *group, FIRST)
    child = train_run(tmp_path / "b", "fashion-cnn-fast", *SMALL, *group, SECOND, f"train.init_from={parent}",
                      "train.freeze=[pretrained]", "train.privacy={noise_multiplier: 1.0, accountant: rdp}")
    before, after = load_file(parent / rundir.WEIGHTS), load_file(child / rundir.WEIGHTS)
    assert all(torch.equal(before[k], after[k]) for k in after if not k.startswith(HEAD))
    assert not torch.equal(before[f"{HEAD}weight"], after[f"{HEAD}weight"])
    assert rundir.read_json(child / "summary.json")["privacy"]["noise_multiplier"] == 1.0
