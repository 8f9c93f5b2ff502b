"""Under CI (CI=true) a test that skips fails the run: a missing extra (Optuna), Debian package (Chromium) or
server (PostgreSQL) cannot turn a red build green. Off CI the same skips stay skips, listed with their reasons."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # each test runs pytest again in a subprocess


def pytest_run(tmp_path, *args, ci: bool, **env) -> subprocess.CompletedProcess:
    environ = {**os.environ, **env}
    environ.pop("CI", None)
    if ci:
        environ["CI"] = "true"
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rs",
                           "--basetemp", str(tmp_path / "basetemp"), *args], cwd=ROOT, env=environ,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture
def without_optuna(tmp_path) -> str:
    """A PYTHONPATH on which `import optuna` fails, as where the tune extra is not installed."""
    shadow = tmp_path / "shadow" / "optuna"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'optuna'\", name='optuna')\n")
    return os.pathsep.join([str(shadow.parent), os.environ.get("PYTHONPATH", "")])


@pytest.mark.parametrize("ci", [True, False], ids=["ci", "local"])
def test_the_tuning_tests_without_optuna_fail_under_ci(tmp_path, without_optuna, ci):
    result = pytest_run(tmp_path, "tests/test_tune.py", ci=ci, PYTHONPATH=without_optuna)
    out = result.stdout + result.stderr
    if ci:
        assert result.returncode not in (0, 5) and "skipped under CI" in out and "genforge tune needs optuna" in out, \
            out[-2000:]
    else:  # exit 5: no tests ran; the skip and its reason are listed
        assert result.returncode == 5 and "SKIPPED" in out and "genforge tune needs optuna" in out, out[-2000:]


def test_the_browser_and_postgresql_tests_without_their_binaries_fail_under_ci(tmp_path):
    """One pytest run (a run each cost 5 s of start-up) with neither Chromium on PATH nor PostgreSQL's binaries:
    every browser test and the PostgreSQL test fail, each with its reason, and nothing passes."""
    empty = tmp_path / "bin"
    empty.mkdir()
    result = pytest_run(tmp_path, "tests/serve/test_browser.py", "tests/test_tune.py", "-k",
                        "test_browser or plain_postgresql_url", ci=True, PATH=str(empty),
                        GENFORGE_TEST_PG_BIN=str(empty))
    out = result.stdout + result.stderr
    assert result.returncode == 1 and out.count("skipped under CI") >= 2, out[-2000:]
    assert "needs Debian's chromium" in out and "PostgreSQL is not installed" in out, out[-2000:]
    assert " passed" not in out.splitlines()[-1]
