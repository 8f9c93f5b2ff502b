"""The classifier report's Mistakes section: the test items with the highest loss (checked against a loss computed here
from the logits), each image as the test set holds it, the attributions of the predicted class, the per-class mean
attributions, a table for tabular models, and a report that still writes when attributions are refused."""

import base64
import io
import re
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import train_run
from PIL import Image

from genforge import rundir, runs
from genforge.errors import GenforgeError
from genforge.evaluate import evaluate
from genforge.evaluate.classification import HIGHEST_LOSSES
from genforge.evaluate.report import write_classifier_report

# sklearn's 8x8 digits (1,437 train, 360 test): a small CNN trains in about a second
DIGITS = ["data.name=digits", "model={kind: fastcnn, channels: [8, 16]}", "train.epochs=2", "train.batch_size=64",
          "train.threads=1"]


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    return runs.load_run(train_run(tmp_path_factory.mktemp("digits"), "quickstart", *DIGITS))


@pytest.fixture(scope="module")
def blobs_run(tmp_path_factory):
    return runs.load_run(train_run(tmp_path_factory.mktemp("blobs"), "blobs-logreg", "train.epochs=3",
                                   "train.threads=1"))


def _section(page: str, title: str) -> str:
    return page.split(f"<h2>{title}</h2>", 1)[1].split("<h2>", 1)[0]


def _images(html: str) -> dict[str, Image.Image]:
    return {alt: Image.open(io.BytesIO(base64.b64decode(data)))
            for alt, data in re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,([^"]+)"', html)}


def _highest(loss: torch.Tensor) -> list[int]:
    return loss.argsort(descending=True)[:HIGHEST_LOSSES].tolist()


def test_the_mistakes_are_the_test_images_with_the_highest_loss(digits_run):
    ds = digits_run.task.dataset(digits_run.config)
    with torch.no_grad():
        loss = F.cross_entropy(digits_run.model(ds.test_x), ds.test_y, reduction="none")
        pred = digits_run.model(ds.test_x).argmax(1)
    section = _section((digits_run.path / "report.html").read_text(), "Mistakes (test)")
    shown = [int(i) for i in re.findall(r'alt="test #(\d+)"', section)]
    assert shown == _highest(loss)
    assert re.findall(r'alt="attributions #(\d+)"', section) == [str(i) for i in shown]  # one overlay per image
    captions = re.findall(r"test #(\d+) · loss ([\d.e+-]+)<br>true (\S+) [\d.]+%<br>predicted (\S+) [\d.]+%", section)
    assert [int(c[0]) for c in captions] == shown
    for i, shown_loss, true, predicted in captions:
        i = int(i)
        assert float(shown_loss) == pytest.approx(loss[i].item(), rel=5e-3)  # shown to 3 significant digits
        assert (true, predicted) == (ds.classes[ds.test_y[i]], ds.classes[pred[i]])
    images = _images(section)
    for i in shown:  # the image shown is the test image, enlarged with square pixels
        image = torch.from_numpy(np.array(images[f"test #{i}"]))
        scale = image.shape[0] // 8
        assert torch.equal(image[::scale, ::scale], ds.test_x[i, 0])


def test_each_class_gets_the_mean_attribution_of_its_first_test_images(digits_run):
    from genforge.evaluate.mistakes import class_attributions
    from genforge.explain import Explainer

    ds = digits_run.task.dataset(digits_run.config)
    page = (digits_run.path / "report.html").read_text()
    figure = _images(_section(page, "Attributions per class (test)"))["class attributions"]
    assert figure.format == "PNG" and figure.width > 400
    explainer = Explainer(digits_run.model, ds.input_shape)
    y = ds.test_y.clone()
    y[y == 3] = 4  # class 3 has no items now
    maps, counts = class_attributions(explainer, ds.test_x, y, 10, per_class=5, steps=8)
    assert counts.tolist() == [5] * 3 + [0] + [5] * 6 and torch.equal(maps[3], torch.zeros(1, 8, 8))
    for k in (0, 4, 9):
        first = (y == k).nonzero()[:5, 0]
        expected = explainer(ds.test_x[first], "integrated-gradients", target=k, steps=8).attributions.mean(0)
        torch.testing.assert_close(maps[k], expected, atol=1e-6, rtol=1e-4)


def test_a_tabular_model_lists_its_highest_loss_rows_with_attributions(blobs_run):
    ds = blobs_run.task.dataset(blobs_run.config)
    with torch.no_grad():
        logit = blobs_run.model(ds.test_x)[:, 0]  # one unit: the "above" class
    loss = F.binary_cross_entropy_with_logits(logit, ds.test_y.float(), reduction="none")
    page = (blobs_run.path / "report.html").read_text()
    section = _section(page, "Mistakes (test)")
    rows = re.findall(r"<tr><td>#(\d+)</td><td>([\d.e+-]+)</td>.*?</tr>", section)
    assert [int(i) for i, _ in rows] == _highest(loss)
    assert all(float(v) == pytest.approx(loss[int(i)].item(), rel=5e-3) for i, v in rows)
    assert "<th>x0</th><th>x1</th>" in section and len(re.findall(r"\([+-][\d.e+-]+\)</td>", section)) == 2 * len(rows)
    assert "Attributions per class" not in page  # averages are drawn for images only


def _report_again(run, tmp_path) -> str:
    """Write the run's report again into a copy of its directory; the page."""
    run_dir = shutil.copytree(run.path, tmp_path / run.path.name)
    ds = run.task.dataset(run.config)
    write_classifier_report(run_dir, run.model, ds, evaluate(run.model, ds.test_x, ds.test_y, ds.classes),
                            rundir.read_json(run_dir / "summary.json"))
    return (run_dir / "report.html").read_text()


def test_a_model_the_explainer_refuses_still_gets_its_report_and_a_bug_still_fails(digits_run, tmp_path, monkeypatch):
    from genforge import explain

    def refuse(self, model, input_shape):
        raise GenforgeError("explanations are for classifiers; this model does not classify")

    monkeypatch.setattr(explain.Explainer, "__init__", refuse)
    section = _section(_report_again(digits_run, tmp_path / "refused"), "Mistakes (test)")
    assert "No attributions: explanations are for classifiers" in section
    assert len(re.findall(r'alt="test #\d+"', section)) == HIGHEST_LOSSES and "attributions #" not in section

    def bug(self, model, input_shape):
        raise RuntimeError("a bug")

    monkeypatch.setattr(explain.Explainer, "__init__", bug)
    with pytest.raises(RuntimeError, match="a bug"):
        _report_again(digits_run, tmp_path / "bug")


def test_a_model_onnx_runtime_runs_gets_its_mistakes_without_attributions(digits_run, tmp_path):
    from genforge.onnx.export import export_run, load_parts

    run_dir = shutil.copytree(digits_run.path, tmp_path / "onnx")
    onnx = runs.load_run(run_dir)
    export_run(onnx)
    load_parts(onnx, run_dir / "export")
    ds = onnx.task.dataset(onnx.config)
    write_classifier_report(run_dir, onnx.model, ds, evaluate(onnx.model, ds.test_x, ds.test_y, ds.classes),
                            rundir.read_json(run_dir / "summary.json"))
    page = (run_dir / "report.html").read_text()
    section = _section(page, "Mistakes (test)")
    assert "No attributions: this model runs in ONNX Runtime" in section and "Attributions per class" not in page
    assert len(re.findall(r'alt="test #\d+"', section)) == HIGHEST_LOSSES
