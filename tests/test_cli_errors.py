"""Argument errors that the parser catches (before any genforge code runs) read like genforge's own: one
`error:` line naming the command and its --help, exit code 2, no boxed panel."""

import pytest

from genforge import cli


def run_main(monkeypatch, capfd, *args) -> tuple[int, str, str]:
    monkeypatch.setattr("sys.argv", ["genforge", *args])
    try:
        cli.main()
        code = 0
    except SystemExit as e:
        code = e.code
    out, err = capfd.readouterr()
    return code, out, err


@pytest.mark.parametrize("args, command, fragment", [
    (["trian"], "genforge", "No such command 'trian'. Did you mean 'train'?"),
    (["sample"], "genforge sample", "Missing argument 'run'"),
    (["sample", "RUN", "-n", "0"], "genforge sample", "Invalid value for '-n'"),
    (["train", "blobs-logreg", "--bogus"], "genforge train", "No such option: --bogus"),
    (["runs", "compare", "a"], "genforge runs compare", "Missing argument 'b'"),
    (["serve", "RUN", "--port", "0"], "genforge serve", "Invalid value for '--port'"),
])
def test_argument_errors_are_one_line(monkeypatch, capfd, args, command, fragment):
    code, out, err = run_main(monkeypatch, capfd, *args)
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1, err  # one line: no usage block, no panel
    assert err.startswith(f"error: {command}: ") and fragment in err and f"(see {command} --help)" in err
    assert "╭" not in err and "Usage:" not in err


def test_help_and_bare_groups_still_show_help(monkeypatch, capfd):
    code, out, _ = run_main(monkeypatch, capfd, "sample", "--help")
    assert code == 0 and "Usage" in out and "--seed" in out
    code, out, err = run_main(monkeypatch, capfd, "data")  # a group without a command: its help, exit 2 as before
    assert code == 2 and "info" in out + err
