"""Compressed runs, end to end through the command line on real Fashion-MNIST runs: int8 quantization and pruning
write a child run that points to its parent, compares itself with it, loads with load_run, predicts and serves."""

import json
import shutil

import httpx
import numpy as np
import pytest
import torch
from helpers import in_this_process, run_cli, start_server

from genforge.errors import GenforgeError
from genforge.onnx.export import current_export
from genforge.runs import load_run
from genforge.serve.adapters import load_models


@pytest.fixture
def cli(capsys, monkeypatch):
    """cli(*args) -> (exit code, stdout, stderr) of `genforge ARGS`, in this process."""
    return lambda *args: run_cli(capsys, monkeypatch, *args)


def compress(cli, parent, tmp_path, *args):
    """`genforge compress PARENT ARGS` into tmp_path/children with cli: (the child run, stdout)."""
    out = tmp_path / "children"
    code, stdout, err = cli("compress", str(parent), *args, "--runs-dir", str(out), "--quiet")
    assert code == 0, err
    (child,) = out.iterdir()
    return child, stdout


def unexported_copy(run, tmp_path):
    """A copy of a trained run without the export a live server of another test module may have made."""
    return shutil.copytree(run, tmp_path / run.name, ignore=shutil.ignore_patterns("export"))


@pytest.fixture(scope="module")
def int8_classifier(classifier_run, tmp_path_factory):
    return compress(in_this_process, classifier_run, tmp_path_factory.mktemp("int8"), "--quantize", "int8",
                    "--calibration", "256")


def test_int8_classifier_child_points_to_its_parent_and_compares(int8_classifier, classifier_run):
    child, stdout = int8_classifier
    lineage = json.loads((child / "compression.json").read_text())
    assert lineage["parent"] == str(classifier_run.resolve()) and lineage["method"] == "int8-static"
    comparison = json.loads((child / "comparison.json").read_text())
    parent, fp32, int8 = (comparison["rows"][k] for k in ("parent", "parent (onnxruntime fp32)", "compressed"))
    assert int8["backend"] == "onnxruntime" and parent["backend"] == "torch"
    assert int8["file_bytes"] < 0.35 * parent["file_bytes"]  # int8 weights: a quarter of fp32, plus the graph
    assert int8["parameters"] == fp32["parameters"] > 0
    assert all(row["latency_ms_b1"] > 0 and row["latency_ms_b256"] > 0 for row in comparison["rows"].values())
    assert abs(comparison["change"]["test_accuracy"]) < 0.02
    assert comparison["change"]["test_accuracy"] == pytest.approx(int8["test_accuracy"] - parent["test_accuracy"])
    assert "vs its parent" in stdout and "test_accuracy" in stdout
    report = (child / "report.html").read_text()
    assert "Compared with the parent" in report and "parent (onnxruntime fp32)" in report
    summary = json.loads((child / "summary.json").read_text())
    assert summary["compressed_from"] == classifier_run.name and summary["test_accuracy"] == int8["test_accuracy"]
    assert not (child / "model.safetensors").exists()  # the child is its int8 ONNX file


def test_quantization_reads_the_parents_export_only_while_it_is_current(classifier_run, tmp_path):
    """compress --quantize starts from the fp32 export that `genforge serve` or `export` already made of the same
    weights, with the default opset and tolerance (the int8 fixture above used it); anything else is exported anew."""
    run = shutil.copytree(classifier_run, tmp_path / classifier_run.name)
    record_path = run / "export" / "export.json"
    record = json.loads(record_path.read_text())
    assert current_export(load_run(run)) == run / "export"
    for change in ({"weights_sha256": "0" * 64}, {"weights_sha256": None}, {"tolerance": 1.0}, {"opset": 20},
                   {"dynamic_batch": False}):
        record_path.write_text(json.dumps({**record, **change}))
        assert current_export(load_run(run)) is None, change
    record_path.write_text(json.dumps(record))
    (run / "export" / record["parts"]["model"]["file"]).unlink()
    assert current_export(load_run(run)) is None


def test_int8_child_round_trips_through_load_run_and_predict(int8_classifier, classifier_run, tmp_path, cli):
    child, _ = int8_classifier
    loaded = load_run(child)
    assert loaded.backend == "onnxruntime" and loaded.lineage["parent_name"] == classifier_run.name
    from genforge.data import load_dataset

    ds = load_dataset("fashion-mnist", progress=False)
    x, y = ds.test_x[:500], ds.test_y[:500]
    with torch.inference_mode():
        child_pred = loaded.model(x).argmax(1)
        parent_pred = load_run(classifier_run).model(x).argmax(1)
    assert (child_pred == parent_pred).float().mean() > 0.95
    assert (child_pred == y).float().mean() > 0.75

    np.save(tmp_path / "x.npy", x[:3, 0].numpy())
    code, out, err = cli("predict", str(child), str(tmp_path / "x.npy"), "--json")
    assert code == 0, err
    predictions = json.loads(out)["predictions"]
    assert [p["index"] for p in predictions] == child_pred[:3].tolist()


def test_serve_answers_with_the_int8_child_and_says_which_backend(int8_classifier, classifier_run):
    child, _ = int8_classifier
    proc, url = start_server([child])
    try:
        card = httpx.get(f"{url}/v1/models").json()["models"][0]
        assert card["backend"] == "onnxruntime"
        from genforge.data import load_dataset

        image = load_dataset("fashion-mnist", progress=False).test_x[0, 0]
        r = httpx.post(f"{url}/v1/models/{card['name']}/classify", json={"inputs": [image.tolist()]})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["backend"] == "onnxruntime" and abs(sum(body["predictions"][0]["probabilities"]) - 1) < 1e-4
    finally:
        proc.terminate()
        proc.wait(30)


def test_serve_exports_a_trained_run_once_and_answers_with_onnxruntime_by_default(classifier_run, tmp_path):
    run = unexported_copy(classifier_run, tmp_path)
    proc, url = start_server([run])
    try:
        card = httpx.get(f"{url}/v1/models").json()["models"][0]
        assert card["backend"] == "onnxruntime"
        assert json.loads((run / "export" / "export.json").read_text())["dynamic_batch"] is True
    finally:
        proc.terminate()
        proc.wait(30)
    exported = (run / "export" / "model.onnx").stat().st_mtime_ns
    (model,) = load_models([run], backend="onnxruntime").values()  # the export is reused, not redone
    assert model.backend == "onnxruntime" and (run / "export" / "model.onnx").stat().st_mtime_ns == exported
    (model,) = load_models([run], backend="torch").values()
    assert model.backend == "torch"


def test_auto_serves_with_torch_when_the_export_cannot_be_written(classifier_run, tmp_path, capsys):
    run = unexported_copy(classifier_run, tmp_path)
    (run / "export").write_text("a file where the export directory would go")
    (model,) = load_models([run]).values()
    assert model.backend == "torch" and "exporting it to ONNX failed" in capsys.readouterr().out
    assert model.probabilities(torch.zeros(2, 1, 28, 28, dtype=torch.uint8)).shape == (2, 10)
    with pytest.raises(GenforgeError, match="exporting it to ONNX failed"):  # asked for, the failure is an error
        load_models([run], backend="onnxruntime")


def test_auto_serves_a_batch_fixed_export_with_torch_and_says_how_to_fix_it(classifier_run, tmp_path, capsys):
    from genforge.onnx.export import export_run

    run = unexported_copy(classifier_run, tmp_path)
    export_run(load_run(run), dynamic_batch=False, batch_size=4)
    (model,) = load_models([run]).values()
    assert model.backend == "torch" and "--dynamic-batch" in capsys.readouterr().out
    with pytest.raises(GenforgeError, match="--dynamic-batch"):
        load_models([run], backend="onnxruntime")
    with pytest.raises(GenforgeError, match="backend must be one of auto, torch, onnxruntime"):
        load_models([run], backend="tensorrt")


def test_an_export_from_earlier_weights_is_refused_and_serve_exports_again(classifier_run, tmp_path, capsys):
    from genforge.onnx.export import export_run
    from genforge.rundir import WEIGHTS, save_weights, weights_digest

    run = unexported_copy(classifier_run, tmp_path)
    export_run(load_run(run))
    trained_on = load_run(run).model  # as if `genforge train --resume` had gone on: new weights, old export
    with torch.no_grad():
        list(trained_on.parameters())[-1].add_(torch.linspace(-1, 1, 10))  # the last layer's bias
    save_weights(trained_on, run / WEIGHTS)
    with pytest.raises(GenforgeError, match="earlier weights"):
        load_run(run, backend="onnxruntime")
    (model,) = load_models([run]).values()
    assert "exporting again" in capsys.readouterr().out and model.backend == "onnxruntime"
    assert json.loads((run / "export" / "export.json").read_text())["weights_sha256"] == weights_digest(run)
    x = torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8)
    with torch.no_grad():
        torch.testing.assert_close(model.probabilities(x), trained_on.probabilities(trained_on(x)), atol=1e-4, rtol=0)


def test_magnitude_pruning_with_finetuning_keeps_its_zeros(classifier_run, pruned_run):
    child = pruned_run  # 80% pruned while fine-tuning 2 epochs (test_resume interrupts the same command)
    loaded, parent = load_run(child), load_run(classifier_run)
    weights = [m.weight for m in loaded.model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
    assert zeros == pytest.approx(0.8, abs=0.002)  # still exactly zero after the fine-tuning
    comparison = json.loads((child / "comparison.json").read_text())
    assert comparison["ratio"]["nonzero_parameters"] < 0.3 and comparison["ratio"]["parameters"] == 1
    assert comparison["rows"]["compressed"]["test_accuracy"] > parent.summary["test_accuracy"] - 0.05
    assert (child / "metrics.jsonl").is_file()  # fine-tuned through the training loop
    assert loaded.config.train.epochs == 2 and loaded.lineage["finetune_epochs"] == 2


def test_channel_pruning_shrinks_the_architecture_in_the_config(classifier_run, tmp_path, cli):
    child, _ = compress(cli, classifier_run, tmp_path, "--prune", "0.5", "--structured")
    parent, loaded = load_run(classifier_run), load_run(child)
    assert loaded.config.model.channels == [c // 2 for c in parent.config.model.channels]
    comparison = json.loads((child / "comparison.json").read_text())
    assert comparison["ratio"]["parameters"] < 0.35  # half the channels on both sides of most weights
    assert comparison["rows"]["compressed"]["file_bytes"] == (child / "model.safetensors").stat().st_size


def test_compress_refuses_what_it_cannot_do(classifier_run, gan_run, tmp_path, cli):
    for args, message in [((), "give one of"), (("--quantize", "int4"), "use int8"),
                          (("--prune", "1.5"), "in (0, 1)"), (("--quantize", "int8", "--structured"), "go with")]:
        code, _, err = cli("compress", str(classifier_run), *args, "--runs-dir", str(tmp_path))
        assert code == 2 and message in err, err
    code, _, err = cli("compress", str(gan_run), "--prune", "0.5", "--structured", "--runs-dir", str(tmp_path))
    assert code == 2 and "classifiers" in err
    assert not list(tmp_path.iterdir())  # a refused command leaves no half-made run


def test_int8_generator_child_samples_and_reports_sample_quality(gan_run, evaluator_cache, tmp_path, cli,
                                                                 monkeypatch):
    monkeypatch.setenv("GENFORGE_CACHE", str(evaluator_cache))
    child, _ = compress(cli, gan_run, tmp_path, "--quantize", "int8", "--calibration", "128")
    comparison = json.loads((child / "comparison.json").read_text())
    assert {"fd", "conditional_accuracy"} <= set(comparison["change"])
    loaded = load_run(child)
    images = loaded.sample(6, label=3, seed=1)
    assert images.shape == (6, 1, 28, 28) and images.dtype == torch.uint8
    assert torch.equal(images, loaded.sample(6, label=3, seed=1))
