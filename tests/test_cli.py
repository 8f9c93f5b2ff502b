"""The command line as a user meets it: exit codes, one-line errors, the README's commands."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from genforge import runs

ROOT = Path(__file__).resolve().parents[1]


def cli(*args, cwd=None, cache=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **({"GENFORGE_CACHE": str(cache)} if cache else {})}
    return subprocess.run([sys.executable, "-m", "genforge", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=600)


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "nope"], "unknown preset or config file 'nope'"),
        (["train", "blobs-logreg", "train.lrr=1"], "unknown config key 'train.lrr'"),
        (["train", "blobs-logreg", "train.epochs=many"], "config key 'train.epochs'"),
        (["train", "blobs-logreg", "model={kind: cnn}"], "needs images but blobs is tabular"),
        (["train", "blobs-logreg", "data.name=cifar"], "cifar"),
        (["evaluate", "/nonexistent"], "is not a run directory"),
        (["train", "blobs-logreg", "--name", "a/b"], "config key 'name'"),
        (["compress", "RUN", "--quantize", "int8", "--prune", "0.5"], "give one of --quantize int8 or --prune"),
        (["compress", "RUN", "--prune", "0.5", "--method", "dynamic"], "--method and --calibration go with"),
        (["export", "RUN", "--dynamic-batch", "--batch-size", "8"], "give one of them"),
    ],
)
def test_user_errors_exit_2_with_one_line(args, message, tmp_path):
    result = cli(*args, "--runs-dir", str(tmp_path)) if args[0] == "train" else cli(*args)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len([line for line in result.stderr.splitlines() if line.startswith("error:")]) == 1


def test_a_refusing_file_system_is_one_line_too(tmp_path):
    (tmp_path / "runs").write_text("a file where the runs folder would go")
    result = cli("train", "blobs-logreg", "--runs-dir", str(tmp_path / "runs"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "error: [Errno 20] Not a directory" in result.stderr


@pytest.fixture(scope="module")
def blobs_run(tmp_path_factory) -> Path:
    parent = tmp_path_factory.mktemp("runs")
    result = cli("train", "blobs-logreg", "--runs-dir", str(parent), "--quiet")
    assert result.returncode == 0, result.stderr
    (run,) = parent.iterdir()
    return run


def test_blobs_logreg_learns_the_line_and_plots_it(blobs_run):
    summary = runs.read_json(blobs_run / "summary.json")
    assert summary["test_accuracy"] > 0.97  # a linearly separable rule, up to the boundary's noise-free margin
    assert (blobs_run / "plots" / "decision_boundary.png").is_file()
    loaded = runs.load_run(blobs_run)
    assert loaded.model.binary


def test_predict_json_contract(blobs_run, tmp_path):
    points = np.array([[3.0, 3.0], [-3.0, -3.0]], dtype=np.float32)
    np.save(tmp_path / "p.npy", points)
    result = cli("predict", str(blobs_run), str(tmp_path / "p.npy"), "--json")
    assert result.returncode == 0, result.stderr
    preds = json.loads(result.stdout)["predictions"]
    assert [p["label"] for p in preds] == ["above", "below"]
    assert [p["index"] for p in preds] == [1, 0]
    assert all(abs(sum(p["probabilities"]) - 1) < 1e-5 for p in preds)


def test_predict_rejects_wrong_shape(blobs_run, tmp_path):
    np.save(tmp_path / "bad.npy", np.zeros((2, 3), dtype=np.float32))
    result = cli("predict", str(blobs_run), str(tmp_path / "bad.npy"))
    assert result.returncode == 2 and "does not fit the model's input (2,)" in result.stderr


def test_broken_runs_and_inputs_are_one_line_errors(blobs_run, tmp_path):
    import shutil
    import socket

    def one_line(result, message):
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert message in result.stderr, result.stderr

    (tmp_path / "empty.npy").write_bytes(b"")
    np.save(tmp_path / "none.npy", np.zeros((0, 2), dtype=np.float32))
    one_line(cli("predict", str(blobs_run), str(tmp_path / "empty.npy")), "not a readable .npy file")
    one_line(cli("predict", str(blobs_run), str(tmp_path / "none.npy")), "holds no inputs")
    bad_yaml = shutil.copytree(blobs_run, tmp_path / "bad-yaml")
    (bad_yaml / "config.yaml").write_text("model: [[[")
    one_line(cli("evaluate", str(bad_yaml)), "config.yaml does not load")
    bad_weights = shutil.copytree(blobs_run, tmp_path / "bad-weights")
    (bad_weights / runs.WEIGHTS).write_bytes(b"\xff" * 64)
    one_line(cli("evaluate", str(bad_weights)), "not a readable safetensors file")
    other_weights = shutil.copytree(blobs_run, tmp_path / "other-weights")
    from safetensors.numpy import save_file

    save_file({"net.weight": np.zeros((3, 3), dtype=np.float32)}, other_weights / runs.WEIGHTS)
    one_line(cli("evaluate", str(other_weights)), "do not fit the model")
    one_line(cli("cv", "blobs-logreg", "--folds", "1500", "--runs-dir", str(tmp_path / "cv")), "smallest class")
    one_line(cli("train", "--resume", str(blobs_run)), "finished training already")
    one_line(cli("train", "blobs-logreg", "train.lr=1", "--resume", str(blobs_run)), "give no preset, overrides")
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = str(taken.getsockname()[1])
        one_line(cli("serve", str(blobs_run), "--port", port), f"cannot listen on 127.0.0.1:{port}")


def test_runs_lists_and_compares(blobs_run, tmp_path):
    result = cli("runs", "--runs-dir", str(blobs_run.parent))
    assert result.returncode == 0 and blobs_run.name[:20] in result.stdout
    assert cli("train", "blobs-logreg", "train.lr=0.0123", "--runs-dir", str(tmp_path), "--quiet").returncode == 0
    (other,) = tmp_path.iterdir()
    result = cli("runs", "compare", str(blobs_run), str(other))
    assert result.returncode == 0, result.stderr
    (row,) = [line for line in result.stdout.splitlines() if "train.lr " in line]
    assert "0.5 " in row and "0.0123" in row  # each run's own value, side by side
    only = cli("runs", "compare", str(blobs_run), str(other), "--diff").stdout
    assert "train.lr " in only and "data.name " not in only and "data.name " in result.stdout


def test_cv_reports_mean_and_sd(tmp_path):
    result = cli("cv", "blobs-logreg", "train.epochs=5", "--folds", "3", "--runs-dir", str(tmp_path), "--quiet")
    assert result.returncode == 0, result.stderr
    match = re.search(r"accuracy: ([\d.]+) ± ([\d.]+) over 3 folds", result.stdout)
    assert match and float(match.group(1)) > 0.9
    (parent,) = tmp_path.iterdir()
    cv = json.loads((parent / "cv.json").read_text())
    assert len(cv["accuracies"]) == 3


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return [line[2:].strip() for line in re.findall(r"^\$ genforge .*$", text, flags=re.M)]


def test_readme_commands_run(tmp_path, fashion_available, evaluator_cache):
    """Every `$ genforge ...` line of the README, in order; training runs get quick overrides."""
    from PIL import Image

    from genforge.data import load_dataset

    Image.fromarray(load_dataset("fashion-mnist", progress=False).test_x[7, 0].numpy()).save(tmp_path / "shirt.png")
    commands = readme_commands()
    assert len(commands) >= 12
    made = []  # the runs made so far; RUN is the latest, RUN_A and RUN_B the two latest
    for command in commands:
        args = command.split()[1:]
        names = {"RUN": made[-1:], "RUN_A": made[-2:-1], "RUN_B": made[-1:]}
        args = [str(names[a][0]) if a in names else a for a in args]
        if args[0] in ("train", "cv"):
            args += ["data.train_subset=512", "train.epochs=1", "train.threads=1", "eval.samples=200",
                     "eval.iwae_k=5", "eval.iwae_images=10", "--runs-dir", str(tmp_path / "r"), "--quiet"]
        if args[0] == "evaluate" and "--seeds" in args:
            args += ["--samples", "200"]
        if args[0] == "quickstart":
            args += ["--runs-dir", str(tmp_path / "r"), "--quiet"]
        if args[0] == "runs" and len(args) == 1:
            args += ["--runs-dir", str(tmp_path / "r")]
        result = cli(*args, cwd=tmp_path, cache=evaluator_cache)
        assert result.returncode == 0, f"{command}\n{result.stderr}"
        if args[0] in ("train", "quickstart"):
            made.append(max((tmp_path / "r").iterdir(), key=lambda p: p.stat().st_mtime))
