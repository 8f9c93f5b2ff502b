"""The machine-dependent choices of train/device.py: how many threads a run takes on a machine that is not idle."""

import subprocess
import sys

import torch
from helpers import train_run

from genforge import rundir
from genforge.train import device
from genforge.train.device import busy_cores, pick_threads


def test_busy_cores_sees_another_process_working():
    loop = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        assert busy_cores(0.5) >= 0.7  # at least the loop's core (other tests may add more, never less)
    finally:
        loop.kill()
        loop.wait()


def test_threads_are_the_cores_that_other_work_leaves_free(monkeypatch):
    cpu = torch.device("cpu")
    assert pick_threads(3, cpu) == (3, "3 (train.threads)")
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    for busy, threads in ((0.0, 4), (0.4, 4), (1.0, 3), (1.6, 2), (3.9, 1), (7.0, 1)):
        monkeypatch.setattr(device, "busy_cores", lambda seconds=0.1, busy=busy: busy)
        assert pick_threads(None, cpu)[0] == threads, busy
    assert pick_threads(None, cpu)[1] == "1 of 4 (other work kept 7.0 cores busy when training started)"
    monkeypatch.setattr(device, "busy_cores", lambda seconds=0.1: None)
    assert pick_threads(None, cpu) == (4, "4 (torch's default; no /proc/stat to see what else runs)")


def test_a_run_prints_and_records_its_choice_of_threads(tmp_path, capsys, monkeypatch):
    run = train_run(tmp_path, "blobs-logreg", "train.epochs=1")
    env = rundir.read_json(run / "env.json")
    assert env["threads_why"].startswith(f"{env['threads']} of ") and "cores busy when training started" in \
        env["threads_why"]
    assert f"threads: {env['threads_why']}" in capsys.readouterr().err
