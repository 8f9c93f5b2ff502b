"""Knowledge distillation (train.distill): the loss, and a student that learns from a teacher run alone."""

import json

import pytest
import torch
from helpers import run_cli, train_run

from genforge.models.classifier import Classifier, Normalize
from genforge.runs import load_run


def classifier(classes: int) -> Classifier:
    outputs = 1 if classes == 2 else classes
    return Classifier(torch.nn.Linear(4, outputs), Normalize(torch.zeros(4), torch.ones(4), 1.0), classes,
                      binary=classes == 2)


@pytest.mark.parametrize("classes", [2, 10])
def test_distillation_loss_is_the_scaled_kl_of_softened_outputs(classes):
    model = classifier(classes)
    student, teacher = torch.randn(8, model.net.out_features), torch.randn(8, model.net.out_features)
    assert model.distillation_loss(teacher, teacher, 4.0).item() == pytest.approx(0, abs=1e-6)
    p_t = model.probabilities(teacher / 4.0)
    p_s = model.probabilities(student / 4.0)
    expected = (p_t * (p_t.log() - p_s.log())).sum(1).mean() * 16
    assert model.distillation_loss(student, teacher, 4.0).item() == pytest.approx(expected.item(), rel=1e-4)


def test_a_student_learns_from_the_teacher_without_labels(classifier_run, tmp_path):
    """weight=1: the labels play no part, so the student's accuracy is what the teacher's outputs taught it."""
    run = train_run(tmp_path, "fashion-cnn-fast", "model.channels=[8,16,32]", "train.threads=1",
                    "data.train_subset=4096", "train.epochs=2", f"train.distill.teacher={classifier_run}",
                    "train.distill.weight=1.0", "train.label_smoothing=0")
    summary = json.loads((run / "summary.json").read_text())
    teacher = json.loads((classifier_run / "summary.json").read_text())["test_accuracy"]  # ~0.83 (one epoch)
    assert summary["test_accuracy"] > 0.6 and summary["test_accuracy"] > teacher - 0.25  # chance is 0.1
    assert load_run(run).config.train.distill.teacher == str(classifier_run)  # the resolved config says so


@pytest.mark.parametrize("weight, labels_matter", [(1.0, False), (0.5, True)])
def test_at_weight_1_the_labels_play_no_part_in_the_update(classifier_run, weight, labels_matter):
    """Two students, one step on the same images with different labels: the same update at weight 1 only."""
    import yaml

    from genforge.config import validate
    from genforge.data import load_dataset
    from genforge.train.steps import ClassifierStep

    raw = yaml.safe_load((classifier_run / "config.yaml").read_text())
    raw["train"].update(distill={"teacher": str(classifier_run), "weight": weight}, label_smoothing=0, ema=None)
    raw["data"]["augment"] = {}
    cfg = validate(raw)
    x = load_dataset("fashion-mnist", progress=False).train_x[:64]
    y = torch.arange(64) % 10
    after = []
    for labels in (y, (y + 3) % 10):
        student = load_run(classifier_run).model
        torch.manual_seed(0)  # the same dropout masks in both
        ClassifierStep(student, cfg, steps_per_epoch=10, autocast=False, channels_last=False)(x, labels)
        after.append(torch.cat([p.detach().flatten() for p in student.parameters()]))
    assert torch.equal(after[0], after[1]) is not labels_matter


def test_a_teacher_that_is_not_a_classifier_is_refused(gan_run, tmp_path, capsys, monkeypatch):
    code, _, err = run_cli(capsys, monkeypatch, "train", "fashion-cnn-fast", "data.train_subset=512", "train.epochs=1",
                           f"train.distill.teacher={gan_run}", "--runs-dir", str(tmp_path))
    assert code == 2 and "not a classifier" in err, err
