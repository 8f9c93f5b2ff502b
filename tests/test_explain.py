"""Attributions (genforge.explain) and their faithfulness (evaluate/faithfulness.py) on real trained classifiers, and
`genforge explain` / `genforge evaluate --explain` as a user runs them."""

import json

import numpy as np
import pytest
import torch
from helpers import run_cli, train_run
from PIL import Image

from genforge import explain as ex
from genforge.data import load_dataset
from genforge.errors import GenforgeError
from genforge.evaluate import faithfulness as fa
from genforge.explain import METHODS
from genforge.runs import load_run


@pytest.fixture
def cli(capsys, monkeypatch):
    return lambda *args: run_cli(capsys, monkeypatch, *args)


@pytest.fixture(scope="module")
def loaded(classifier_run):
    return load_run(classifier_run)


@pytest.fixture(scope="module")
def test_images(fashion_available):
    ds = load_dataset("fashion-mnist", progress=False)
    return ds.test_x[:24], ds.test_y[:24]


@pytest.mark.parametrize("method", METHODS)
def test_attributions_have_the_inputs_shape_and_explain_the_asked_class(loaded, test_images, method):
    x = test_images[0][:3]
    a = loaded.explain(x, method=method)
    assert a.shape == x.shape and a.dtype == torch.float32 and torch.isfinite(a).all() and a.abs().sum() > 0
    other = loaded.explain(x, method=method, target="Bag")  # another class, another map
    assert not torch.allclose(a, other)


@pytest.mark.parametrize(("precision", "tolerance"), [("fp32", 0.02), ("bf16", 0.1)])
def test_integrated_gradients_is_complete(loaded, test_images, precision, tolerance):
    """Sundararajan et al.'s completeness: the attributions add up to f(x) - f(baseline), f the class's
    log-probability (in fp32). The Gauss-Legendre path sum converges as the points grow; 128 points: within 2% of the
    gap in fp32. bf16 autocast (3 significant digits per gradient) stays within 10%."""
    explainer = loaded.explainer(precision)
    x = test_images[0][:8]
    result = explainer(x, "integrated-gradients", steps=128, smooth=False)
    assert result.precision == precision and result.copies == 1
    with torch.no_grad():
        t = result.target[:, None]
        gap = (explainer.forward(explainer.inputs(x)).gather(1, t)
               - explainer.forward(explainer.baseline(len(x))).gather(1, t))[:, 0]
    total = result.attributions.sum((1, 2, 3))
    assert torch.allclose(total, gap, rtol=tolerance, atol=tolerance), (total, gap)


def test_smoothed_integrated_gradients_averages_the_paths_to_noisy_copies(loaded, test_images, monkeypatch):
    """The default integrated gradients of an image: the gradients along the paths to 8 noisy copies (the same seeded
    noise for every input), averaged, times the image. Without noise it is plain integrated gradients on 4 points;
    a black pixel (the baseline's value) gets exactly 0; an input's map does not depend on its batch."""
    explainer = loaded.explainer("fp32")
    x = test_images[0][:6]
    result = explainer(x, "integrated-gradients")
    assert (result.steps, result.copies) == (32, 8)
    assert result.describe() == "integrated-gradients (32 steps: 8 noisy copies x 4 path points)"
    a = result.attributions
    black = x == 0
    assert black.any() and (a[black] == 0).all() and (a[~black] != 0).float().mean() > 0.9
    assert torch.equal(explainer(x[4:5], "integrated-gradients").attributions, a[4:5])
    plain = explainer(x, "integrated-gradients", steps=4, smooth=False)
    assert plain.copies == 1 and not torch.allclose(plain.attributions, a, atol=1e-3)
    monkeypatch.setattr(ex, "IG_NOISE", 0.0)  # 8 identical copies: their mean is the image's own path
    assert torch.allclose(explainer(x, "integrated-gradients").attributions, plain.attributions, atol=1e-5)
    assert ex.ig_split(32) == (8, 4) and ex.ig_split(8) == (2, 4) and ex.ig_split(3) == (1, 3)
    assert ex.ig_split(64, smooth=False) == (1, 64)


def test_precision_is_chosen_per_device_and_checked(loaded, test_images):
    """auto: bf16 autocast where the device runs it fast (fast_bf16), else fp32; both give maps that agree; anything
    else is refused with the choices."""
    from genforge.train.device import fast_bf16

    auto = loaded.explainer()
    assert auto.precision == ("bf16" if fast_bf16(auto.device) else "fp32")
    x = test_images[0][:8]
    a32 = loaded.explain(x, "integrated-gradients", precision="fp32")
    a16 = loaded.explain(x, "integrated-gradients", precision="bf16")
    assert a16.dtype == torch.float32 and a16.shape == a32.shape
    assert torch.nn.functional.cosine_similarity(a32.flatten(1), a16.flatten(1)).min() > 0.95
    with pytest.raises(GenforgeError, match="precision must be one of auto, fp32, bf16"):
        loaded.explain(x, precision="fp16")


def test_attributions_see_what_the_model_sees(loaded, test_images):
    """Removing the top-attributed pixels lowers the class probability faster than removing random ones."""
    x = test_images[0]
    result = loaded.explainer()(x, "integrated-gradients")
    deletion, insertion = fa.curves(loaded.model, x, result.target, fa.orderings(x, result.attributions))
    random_deletion, random_insertion = fa.curves(loaded.model, x, result.target, fa.random_orderings(x, 0))
    assert fa.area(deletion) < 0.8 * fa.area(random_deletion)
    assert fa.area(insertion) > 1.2 * fa.area(random_insertion)
    assert torch.allclose(deletion[:, 0], insertion[:, -1])  # the whole image, from both ends
    assert torch.allclose(deletion[:, -1], insertion[:, 0])  # a black image


def test_a_map_that_copies_the_image_fails_the_randomization_check(loaded, test_images):
    """The rank correlation is taken over the object's pixels: maps that are the image itself survive any
    randomization (rho 1, a fail), while the model's gradient changes with its weights."""
    x = test_images[0][:8]
    mask = x.float().amax(1) / 255 > fa.OBJECT_LEVEL
    image = x.float().sum(1)
    assert fa.rank_correlation(image, image * 3 + 1, mask) == pytest.approx((1.0, 1.0))
    rows = fa.sanity_check(loaded.model, x, "saliency", loaded.explainer()(x).target)
    assert [r["randomized_down_to"] for r in rows][0] == fa.layers_top_down(loaded.model)[0][0]  # the head first
    assert len(rows) == len(fa.layers_top_down(loaded.model))
    assert abs(rows[-1]["spearman_abs"]) < 0.5  # a fully random network's gradient is another map
    assert loaded.model.net[-1].weight.abs().sum() > 0 and fa.randomized(loaded.model, 1, 0).net[-1].weight.ne(
        loaded.model.net[-1].weight).any()  # the original is left as it was


def test_grad_cam_needs_feature_maps(tmp_path):
    run = load_run(train_run(tmp_path, "blobs-logreg", "train.epochs=2"))
    x = torch.randn(4, 2)
    assert run.explain(x).shape == (4, 2)  # features have attributions too
    with pytest.raises(GenforgeError, match="grad-cam needs a model with feature maps"):
        run.explain(x, method="grad-cam")


def test_a_recurrent_classifier_is_explained_and_its_report_shows_it(tmp_path, fashion_available, test_images):
    """An LSTM's layers answer tuples, which the search for Grad-CAM's feature map must pass over."""
    run_dir = train_run(tmp_path, "fashion-rowlstm", "data.train_subset=512", "train.epochs=1", "model.hidden=16")
    run = load_run(run_dir)
    x = test_images[0][:2]
    a = run.explain(x)
    assert a.shape == x.shape and a.abs().sum() > 0
    with pytest.raises(GenforgeError, match="grad-cam needs a model with feature maps"):
        run.explain(x, method="grad-cam")
    assert "Attributions per class" in (run_dir / "report.html").read_text()


def test_explain_refuses_what_it_cannot_explain(loaded, test_images, gan_run):
    x = test_images[0][:1]
    for kwargs, message in (({"method": "lime"}, "unknown method 'lime'"), ({"target": 10}, "out of range 0-9"),
                            ({"target": "Hat"}, "unknown class 'Hat'"), ({"steps": 0}, "steps must be between"),
                            ({"steps": 8, "method": "occlusion"}, "occlusion takes no steps")):
        with pytest.raises(GenforgeError, match=message):
            loaded.explain(x, **kwargs)
    with pytest.raises(GenforgeError, match="cannot classify"):
        load_run(gan_run).explain(x)


def test_explain_command_writes_a_grid_a_folder_and_json(classifier_run, test_images, tmp_path, cli):
    for i in range(2):
        Image.fromarray(test_images[0][i, 0].numpy()).save(tmp_path / f"item{i}.png")
    np.save(tmp_path / "batch.npy", test_images[0][2:5, 0].numpy())
    files = [tmp_path / "item0.png", tmp_path / "item1.png", tmp_path / "batch.npy"]
    code, out, err = cli("explain", classifier_run, *files, "--out", tmp_path / "grid.png", "--steps", "8",
                         "--method", "integrated-gradients")
    assert code == 0, err
    assert out.count("predicted") == 5 and "batch.npy[2]" in out
    assert "integrated-gradients (8 steps: 2 noisy copies x 4 path points)" in out
    with Image.open(tmp_path / "grid.png") as grid:
        assert grid.width > 300 and grid.height > 5 * 150
    code, out, err = cli("explain", classifier_run, files[0], "--method", "grad-cam", "--target", "Trouser",
                         "--out", tmp_path / "maps")
    assert code == 0, err
    assert "explained Trouser" in out
    (overlay,) = (tmp_path / "maps").glob("*.png")
    with Image.open(overlay) as im:
        assert im.size == (28 * 8, 28 * 8) and im.mode == "RGB"
    code, out, err = cli("explain", classifier_run, files[1], "--json", "--method", "saliency", "--precision", "fp32")
    assert code == 0, err
    assert json.loads(out)["precision"] == "fp32"
    (row,) = json.loads(out)["explanations"]
    assert np.array(row["attributions"]).shape == (1, 28, 28) and row["input"] == "item1.png"
    code, _, err = cli("explain", classifier_run, files[0], "--method", "lime")
    assert code == 2 and err.startswith("error: unknown method 'lime'") and len(err.strip().splitlines()) == 1


def test_evaluate_explain_scores_every_method_beside_random_and_edges(classifier_run, cli):
    code, out, err = cli("evaluate", classifier_run, "--explain", "--examples", "20")
    assert code == 0, err
    assert "random" in out and "most faithful method that passes the sanity check" in out
    result = json.loads((classifier_run / "explain.json").read_text())
    methods = result["methods"]
    assert result["examples"] == result["sanity_examples"] == 20 and result["seed"] == 0
    assert set(methods) == {"random", "edge detector", *METHODS}
    assert methods["random"]["deletion_vs_random"] == 1.0
    assert methods["integrated-gradients"]["deletion_auc"] < methods["random"]["deletion_auc"]
    assert all(len(methods[m]["sanity"]) == len(fa.layers_top_down(load_run(classifier_run).model)) for m in METHODS)
    best = result["most_faithful_passing"]
    assert best is None or methods[best]["passes_sanity"]


def test_faithfulness_reports_progress_and_its_chunks_do_not_change_the_scores(loaded, monkeypatch):
    """evaluate --explain takes minutes on 1,000 images: its progress moves per chunk of attributions, per method's
    curves and per layer of its cascade, and attributing in chunks scores what attributing at once does (chunks of
    32 here, not 128: the same two chunks on a third of the images)."""
    monkeypatch.setattr(fa, "PROGRESS_CHUNK", 32)
    x = load_dataset("fashion-mnist", progress=False).test_x[: fa.PROGRESS_CHUNK + 12]  # two chunks
    seen = []
    result = fa.faithfulness(loaded.model, x, methods=("integrated-gradients",), sanity_examples=4,
                             progress=lambda what, done, total: seen.append((what, done, total)))
    layers = len(fa.layers_top_down(loaded.model))
    assert [done for _, done, _ in seen] == list(range(1, 2 + 2 + 1 + layers)) and seen[-1][2] == len(seen)
    assert [what for what, _, _ in seen].count("integrated-gradients: attributions") == 2
    assert [what for what, _, _ in seen].count("integrated-gradients: randomization") == layers
    with torch.no_grad():
        target = loaded.model.probabilities(loaded.model(x.float())).argmax(1)
    whole = loaded.explainer()(x, "integrated-gradients", target).attributions
    deletion, insertion = fa.curves(loaded.model, x, target, fa.orderings(x, whole))
    row = result["methods"]["integrated-gradients"]
    assert (row["deletion_auc"], row["insertion_auc"]) == pytest.approx((fa.area(deletion), fa.area(insertion)))


def test_a_run_loaded_with_onnxruntime_is_explained_with_its_torch_weights(classifier_run, loaded, test_images,
                                                                          tmp_path):
    import shutil

    from genforge.onnx.export import export_run

    run = shutil.copytree(classifier_run, tmp_path / classifier_run.name)
    export_run(load_run(run))
    onnx = load_run(run, backend="onnxruntime")
    x = test_images[0][:2]
    assert torch.allclose(onnx.explain(x, method="saliency"), loaded.explain(x, method="saliency"))
