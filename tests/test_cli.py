"""The command line as a user meets it: exit codes, one-line errors, the README's commands. The commands run in
this process (helpers.run_cli); only the server's runs in a subprocess."""

import json
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
from helpers import genforge_cli, run_cli, train_run

from genforge import rundir, runs

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def cli(capsys, monkeypatch):
    """cli(*args) -> (exit code, stdout, stderr) of `genforge ARGS`."""
    return lambda *args: run_cli(capsys, monkeypatch, *args)


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
def test_user_errors_exit_2_with_one_line(args, message, tmp_path, cli):
    code, _, err = cli(*args, "--runs-dir", str(tmp_path)) if args[0] == "train" else cli(*args)
    assert code == 2, err
    assert message in err
    assert "Traceback" not in err
    assert len([line for line in err.splitlines() if line.startswith("error:")]) == 1


def test_a_refusing_file_system_is_one_line_too(tmp_path, cli):
    (tmp_path / "runs").write_text("a file where the runs folder would go")
    code, _, err = cli("train", "blobs-logreg", "--runs-dir", str(tmp_path / "runs"))
    assert code == 2 and "Traceback" not in err
    assert "error: [Errno 20] Not a directory" in err


@pytest.fixture(scope="module")
def blobs_run(tmp_path_factory) -> Path:
    return train_run(tmp_path_factory.mktemp("runs"), "blobs-logreg")


def test_blobs_logreg_learns_the_line_and_plots_it(blobs_run):
    summary = rundir.read_json(blobs_run / "summary.json")
    assert summary["test_accuracy"] > 0.97  # a linearly separable rule, up to the boundary's noise-free margin
    assert (blobs_run / "plots" / "decision_boundary.png").is_file()
    loaded = runs.load_run(blobs_run)
    assert loaded.model.binary


def test_predict_json_contract(blobs_run, tmp_path, cli):
    points = np.array([[3.0, 3.0], [-3.0, -3.0]], dtype=np.float32)
    np.save(tmp_path / "p.npy", points)
    code, out, err = cli("predict", str(blobs_run), str(tmp_path / "p.npy"), "--json")
    assert code == 0, err
    preds = json.loads(out)["predictions"]
    assert [p["label"] for p in preds] == ["above", "below"]
    assert [p["index"] for p in preds] == [1, 0]
    assert all(abs(sum(p["probabilities"]) - 1) < 1e-5 for p in preds)


def test_predict_rejects_wrong_shape(blobs_run, tmp_path, cli):
    np.save(tmp_path / "bad.npy", np.zeros((2, 3), dtype=np.float32))
    code, _, err = cli("predict", str(blobs_run), str(tmp_path / "bad.npy"))
    assert code == 2 and "does not fit the model's input (2,)" in err


def test_broken_runs_and_inputs_are_one_line_errors(blobs_run, tmp_path, cli):
    import shutil
    import socket

    def one_line(result, message):
        code, _, err = result
        assert code == 2 and "Traceback" not in err, err
        assert message in err, err

    (tmp_path / "empty.npy").write_bytes(b"")
    np.save(tmp_path / "none.npy", np.zeros((0, 2), dtype=np.float32))
    one_line(cli("predict", str(blobs_run), str(tmp_path / "empty.npy")), "not a readable .npy file")
    one_line(cli("predict", str(blobs_run), str(tmp_path / "none.npy")), "holds no inputs")
    bad_yaml = shutil.copytree(blobs_run, tmp_path / "bad-yaml")
    (bad_yaml / "config.yaml").write_text("model: [[[")
    one_line(cli("evaluate", str(bad_yaml)), "config.yaml does not load")
    bad_weights = shutil.copytree(blobs_run, tmp_path / "bad-weights")
    (bad_weights / rundir.WEIGHTS).write_bytes(b"\xff" * 64)
    one_line(cli("evaluate", str(bad_weights)), "not a readable safetensors file")
    other_weights = shutil.copytree(blobs_run, tmp_path / "other-weights")
    from safetensors.numpy import save_file

    save_file({"net.weight": np.zeros((3, 3), dtype=np.float32)}, other_weights / rundir.WEIGHTS)
    one_line(cli("evaluate", str(other_weights)), "do not fit the model")
    one_line(cli("cv", "blobs-logreg", "--folds", "1500", "--runs-dir", str(tmp_path / "cv")), "smallest class")
    one_line(cli("train", "--resume", str(blobs_run)), "finished training already")
    one_line(cli("train", "blobs-logreg", "train.lr=1", "--resume", str(blobs_run)), "give no preset, overrides")
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = str(taken.getsockname()[1])
        served = genforge_cli("serve", str(blobs_run), "--port", port)  # a server: never in this process
        one_line((served.returncode, served.stdout, served.stderr), f"cannot listen on 127.0.0.1:{port}")


def test_runs_lists_and_compares(blobs_run, tmp_path, cli):
    code, out, _ = cli("runs", "--runs-dir", str(blobs_run.parent))
    assert code == 0 and blobs_run.name[:20] in out
    assert cli("train", "blobs-logreg", "train.lr=0.0123", "--runs-dir", str(tmp_path), "--quiet")[0] == 0
    (other,) = tmp_path.iterdir()
    code, out, err = cli("runs", "compare", str(blobs_run), str(other))
    assert code == 0, err
    (row,) = [line for line in out.splitlines() if "train.lr " in line]
    assert "0.5 " in row and "0.0123" in row  # each run's own value, side by side
    _, only, _ = cli("runs", "compare", str(blobs_run), str(other), "--diff")
    assert "train.lr " in only and "data.name " not in only and "data.name " in out


def test_cv_reports_mean_and_sd(tmp_path, cli):
    code, out, err = cli("cv", "blobs-logreg", "train.epochs=5", "--folds", "3", "--runs-dir", str(tmp_path),
                         "--quiet")
    assert code == 0, err
    match = re.search(r"accuracy: ([\d.]+) ± ([\d.]+) over 3 folds", out)
    assert match and float(match.group(1)) > 0.9
    (parent,) = tmp_path.iterdir()
    cv = json.loads((parent / "cv.json").read_text())
    assert len(cv["accuracies"]) == 3


def readme_sections() -> dict[str, list[str]]:
    """The README's `$ genforge ...` lines by its `## ` section, in order. A section's commands stand alone (RUN is
    the section's latest run), so that each section is a test of its own."""
    sections: dict[str, list[str]] = {}
    name = ""
    for line in (ROOT / "README.md").read_text().splitlines():
        if line.startswith("## "):
            name = line[3:].strip()
        elif line.startswith("$ genforge "):
            sections.setdefault(name, []).append(line[2:].strip())
    return sections


QUICK_LOOK = ["data.train_subset=512", "data.test_subset=1000", "train.epochs=1"]  # the README's quick look
# The text quick look trains 75 s and scores 1,000 entries (~160,000 characters) in 29 s on the 2-core machine; the
# README test trains its text on 32 windows (train_subset counts a language model's windows: one step), fine-tunes
# on 32 entries and scores 100 entries
TEXT_LOOK = ["data.train_subset=32", "data.test_subset=100"]
# The README test's models are narrower than the presets' where what follows the training costs in proportion:
# `evaluate --explain` re-attributes every layer of fashion-cnn for every method (24 s at full width), and the text
# runs' scoring and speed measurements are forwards of the full model. The same commands run on the same code paths
NARROWER = {"fashion-cnn": ["model.channels=[8,16,32]"], "text-gpt": ["model.layers=2", "model.width=64"],
            "fortunes-finetune": ["model.layers=2", "model.width=64"]}


def test_the_readme_shows_the_quick_look_its_test_trains_with():
    assert f"`{' '.join(QUICK_LOOK)}`" in (ROOT / "README.md").read_text()


def test_the_readme_has_its_commands_in_sections():
    sections = readme_sections()
    assert len(sections) >= 8 and sum(map(len, sections.values())) >= 30, sections


@pytest.mark.parametrize("section", list(readme_sections()))
def test_readme_commands_run(section, tmp_path, fashion_available, evaluator_cache, cli, monkeypatch):
    """Every `$ genforge ...` line of a README section, in order, in tmp_path; training runs get the README's quick
    look (QUICK_LOOK) and cheaper scores."""
    from PIL import Image

    from genforge.data import load_dataset

    Image.fromarray(load_dataset("fashion-mnist", progress=False).test_x[7, 0].numpy()).save(tmp_path / "shirt.png")
    commands = readme_sections()[section]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GENFORGE_CACHE", str(evaluator_cache))
    made = []  # the runs made so far; RUN is the latest, RUN_A and RUN_B the two latest
    for command in commands:
        args = shlex.split(command)[1:]  # as a shell reads it: a quoted --text is one argument
        names = {"RUN": made[-1:], "RUN_A": made[-2:-1], "RUN_B": made[-1:]}
        # RUN alone, or as an override's value (train.init_from=RUN)
        args = [re.sub(r"(?<![^=])(RUN|RUN_A|RUN_B)$", lambda m, names=names: str(names[m[1]][0]), a) for a in args]
        if args[0] in ("train", "cv"):
            args += [*QUICK_LOOK, "train.threads=1", "eval.samples=200", "eval.iwae_k=5", "eval.iwae_images=10",
                     "--runs-dir", str(tmp_path / "r"), "--quiet"]
            if args[1].startswith(("text-", "fortunes-")):  # the text presets
                args += TEXT_LOOK
            args += NARROWER.get(args[1], [])
        if args[0] == "evaluate" and "--seeds" in args:
            args += ["--samples", "200"]
        if args[0] == "evaluate" and "--explain" in args:
            args += ["--examples", "20"]
        if args[0] == "tune":  # two short trials of the README's study, in ./runs (where its best.yaml is shown)
            args[args.index("--trials") + 1] = "2"
            args += ["data.train_subset=512", "train.epochs=2", "train.threads=1"]
        if args[0] == "quickstart":
            args += ["--runs-dir", str(tmp_path / "r"), "--quiet"]
        if args[0] == "runs" and len(args) == 1:
            args += ["--runs-dir", str(tmp_path / "r")]
        code, _, err = cli(*args)
        assert code == 0, f"{command}\n{err}"
        if args[0] in ("train", "quickstart"):
            made.append(max((p.parent for p in (tmp_path / "r").glob("*/config.yaml")),  # not mlruns/, tensorboard/
                            key=lambda p: p.stat().st_mtime))
