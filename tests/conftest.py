import json
import os
from pathlib import Path

import pytest
import torch
from filelock import FileLock
from helpers import PRUNE_FINETUNE, QUICK_GENERATOR, call_main, train_run

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
torch.set_num_threads(1)  # two threads on two cores are fragile when pytest shares the machine

FASHION = "/usr/share/datasets/fashion-mnist"
# Under CI every test must run: a skip there (a missing package, Debian package or server, a service that did not
# start) would pass a red build as green, so it is reported as a failure with the skip's reason. Off CI a skip stays
# a skip, listed with its reason at the end of the run (-rs).
STRICT = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _fail_skip(report) -> None:
    if STRICT and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped under CI (CI={os.environ['CI']}), where every test must run: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _fail_skip(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield  # a module-level skip (pytest.importorskip of a missing extra) skips the whole file
    _fail_skip(outcome.get_result())


# With pytest-xdist (make test: 2 workers, --dist loadfile), the longest modules go first, so that the workers end
# together (longest processing time first): the first needs the session's trained runs and the second none, so that
# one worker trains them while the other works. Measured on the 2-core machine; a module not listed follows these, in
# file order. A plain run keeps the file order.
LONGEST_FIRST = ["compress/test_compress.py", "test_distributed.py", "test_cli.py", "test_privacy.py", "test_resume.py",
                 "test_tune.py", "test_train.py", "test_forecast.py", "compress/test_export.py", "test_explain.py",
                 "test_ci_strict.py", "serve/test_fuzz.py", "serve/test_client.py", "serve/test_browser.py",
                 "serve/test_workers.py", "serve/test_shutdown.py", "serve/test_hostile.py", "test_track.py",
                 "test_distill.py", "test_transfer.py", "serve/test_overrun.py", "test_covariates.py"]


# A test that uses one of these fixtures trains on real data (or starts a browser, a database) for more than a few
# seconds: it is marked slow, as are the tests marked so by hand, and `make test-fast` (-m "not slow") leaves them out
SLOW_FIXTURES = {"evaluator_cache", "classifier_run", "gan_run", "vae_run", "pruned_run", "two_process_run", "text_run",
                 "text_classifier_run", "private_run", "promo_runs", "postgres", "browser"}


@pytest.hookimpl(tryfirst=True)  # before -m selects by the marks
def pytest_collection_modifyitems(config, items):
    for item in items:
        if SLOW_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.slow)
    if hasattr(config, "workerinput"):  # an xdist worker: the controller hands out the files in this order
        rank = {f"tests/{name}": i for i, name in enumerate(LONGEST_FIRST)}
        items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))  # stable: file order otherwise


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory):
    """No test reads or writes the user's ~/.cache/genforge or GENFORGE_DATA: the session gets its own empty cache
    (inherited by the CLI subprocesses), and the fixtures below that need another set theirs."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GENFORGE_CACHE", str(tmp_path_factory.mktemp("session-cache")))
        mp.delenv("GENFORGE_DATA", raising=False)
        yield


@pytest.fixture(scope="session")
def fashion_available() -> bool:
    if not os.path.isdir(FASHION):
        pytest.skip("dataset-fashion-mnist is not installed (apt-get install -y dataset-fashion-mnist)")
    return True


@pytest.fixture(scope="session")
def fortunes_available() -> bool:
    if not os.path.isdir("/usr/share/games/fortunes"):
        pytest.skip("the fortunes corpus is not installed (apt-get install -y fortunes)")
    return True


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    """An empty cache so no test reads or pollutes ~/.cache/genforge."""
    path = tmp_path / "cache"
    monkeypatch.setenv("GENFORGE_CACHE", str(path))
    monkeypatch.delenv("GENFORGE_DATA", raising=False)
    return path


def built_once(request, tmp_path_factory, name: str, build):
    """What build(folder) returns (a path, or a tuple of paths), built once for the whole test run. Under
    pytest-xdist each worker runs the session fixtures itself: the first worker to ask builds in the run's common
    temporary folder while the others wait on its lock, and all of them then use that one result, so that no trained
    fixture is trained twice. Without xdist it is an ordinary session fixture."""
    root = tmp_path_factory.getbasetemp()
    if hasattr(request.config, "workerinput"):  # an xdist worker: its basetemp is <the run's basetemp>/popen-gwN
        root = root.parent
    done = root / f"{name}.json"
    with FileLock(root / f"{name}.lock"):
        if not done.is_file():
            folder = root / name
            folder.mkdir()  # a build that failed left it behind: then this fails too, with the folder named
            result = build(folder)
            done.write_text(json.dumps([str(p) for p in result] if isinstance(result, tuple) else str(result)))
    result = json.loads(done.read_text())
    return tuple(map(Path, result)) if isinstance(result, list) else Path(result)


def exported(run: Path) -> Path:
    """The run after what `genforge serve` does on its first start with the default backend (auto): its export to
    ONNX (`genforge export RUN --dynamic-batch`, which serve runs in a child process; here in this one, which has
    paid the imports already). Done once while the fixture is built, so that servers started by different xdist
    workers never export the same run at the same time; serve then finds the export current and loads it."""
    from genforge.serve.adapters import load_models

    assert call_main("export", run, "--dynamic-batch") == 0, f"{run} could not be exported to ONNX"
    (model,) = load_models([run]).values()
    assert model.backend == "onnxruntime", f"{run} was exported but serve does not load its export"
    return run


@pytest.fixture(scope="session")
def evaluator_cache(request, tmp_path_factory, fashion_available):
    """A private cache holding a cheap Fashion-MNIST evaluator (1 epoch on 2,048 images, scored on 1,000: 10 s, not
    the 46 s of 8,192 and 10,000; no test reads its quality, only that generators are scored in its features), for
    every test and CLI call that scores a generator (pass it as GENFORGE_CACHE): the same lookup-by-checksum path as
    the full one."""
    from genforge.data import load_dataset
    from genforge.training import train_evaluator

    def build(cache):
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("GENFORGE_CACHE", str(cache))
            train_evaluator(load_dataset("fashion-mnist", progress=False),
                            overrides=["data.train_subset=2048", "data.test_subset=1000", "train.epochs=1",
                                       "train.threads=1"])
        return cache

    return built_once(request, tmp_path_factory, "evaluator-cache", build)


@pytest.fixture(scope="session")
def gan_run(request, evaluator_cache, tmp_path_factory) -> Path:
    """A class-conditional DCGAN, one epoch on 1,024 Fashion-MNIST images; exported to ONNX."""
    return built_once(request, tmp_path_factory, "gan", lambda parent: exported(train_run(
        parent, "fashion-cdcgan", *QUICK_GENERATOR, "model.width=16", cache=evaluator_cache)))


@pytest.fixture(scope="session")
def vae_run(request, evaluator_cache, tmp_path_factory) -> Path:
    """A convolutional VAE, one epoch on 1,024 Fashion-MNIST images; exported to ONNX."""
    return built_once(request, tmp_path_factory, "vae", lambda parent: exported(train_run(
        parent, "fashion-vae", *QUICK_GENERATOR, "model.width=8", "eval.iwae_k=20", "eval.iwae_images=20",
        cache=evaluator_cache)))


TEXT = ["text-gpt", "model.layers=1", "model.width=32", "model.heads=2", "model.context=64", "train.epochs=1",
        "train.batch_size=16", "data.train_subset=64", "data.test_subset=40", "train.threads=1"]


@pytest.fixture(scope="session")
def text_run(request, tmp_path_factory, fortunes_available) -> Path:
    """A tiny byte-level language model of the fortunes corpus: one epoch of 64 windows (seconds); exported to ONNX."""
    return built_once(request, tmp_path_factory, "text", lambda parent: exported(train_run(parent, *TEXT)))


TEXT_CLASSIFIER = ["fortunes-finetune", "model.layers=1", "model.width=32", "model.heads=2", "model.context=64",
                   "train.epochs=1", "data.labels_per_class=5", "data.test_subset=30", "train.threads=1"]


@pytest.fixture(scope="session")
def text_classifier_run(request, tmp_path_factory, text_run) -> Path:
    """text_run fine-tuned into a classifier of the 10 largest fortunes files (5 labels each, one epoch); exported."""
    return built_once(request, tmp_path_factory, "text-classifier", lambda parent: exported(train_run(
        parent, *TEXT_CLASSIFIER, f"train.init_from={text_run}")))


CLASSIFIER = ["fashion-cnn-fast", "train.threads=1", "data.train_subset=8192", "data.test_subset=2000",
              "train.epochs=1", "train.batch_size=128"]


@pytest.fixture(scope="session")
def classifier_run(request, tmp_path_factory, fashion_available) -> Path:
    """The fast Fashion-MNIST CNN, one epoch on 8,192 images (~83% accuracy on the first 2,000 test images), trained
    by the real command line (`genforge train CLASSIFIER`, in this process; test_train checks it end to end);
    exported to ONNX."""
    def build(parent):
        assert call_main("train", *CLASSIFIER, "--runs-dir", str(parent), "--quiet") == 0
        (run,) = parent.iterdir()
        return exported(run)

    return built_once(request, tmp_path_factory, "clf", build)


@pytest.fixture(scope="session")
def pruned_run(request, classifier_run, tmp_path_factory) -> Path:
    """classifier_run with 80% of its weights pruned while it fine-tunes 2 epochs (helpers.PRUNE_FINETUNE): the
    child that `genforge compress RUN --prune 0.8 --finetune-epochs 2 PRUNE_FINETUNE` makes (~15 s)."""
    from genforge.compress.prune import prune_run

    def build(parent):
        child, _ = prune_run(classifier_run, 0.8, finetune_epochs=2, overrides=PRUNE_FINETUNE, runs_dir=parent,
                             quiet=True)
        return child

    return built_once(request, tmp_path_factory, "pruned", build)
