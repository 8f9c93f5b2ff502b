"""Classification: cross-entropy steps, accuracy on validation, the test report, predict and the classify verb."""

from __future__ import annotations

from pathlib import Path

import torch
from rich.table import Table

from genforge.evaluate import evaluate, measure_speed
from genforge.evaluate.report import write_classifier_report
from genforge.onnx.parts import Part
from genforge.tasks.base import Task
from genforge.train import steps


class ClassifyTask(Task):
    name = "classify"
    tune_metric = ("val_acc", "max")
    verbs = ("classify",)
    parts = (Part("model", "forward", ("x",), ("logits",)),)
    cross_validation = True
    structured_pruning = True

    def step(self, model, cfg, steps_per_epoch: int, autocast: bool, channels_last: bool):

        # looked up on the module at each call, so that a test can swap in a step that misbehaves on purpose
        return steps.ClassifierStep(model, cfg, steps_per_epoch, autocast=autocast, channels_last=channels_last)

    def validate(self, model, x: torch.Tensor, y: torch.Tensor, ds, cfg) -> dict:

        result = evaluate(model, x, y, ds.classes)
        return {"loss": result["loss"], "acc": result["accuracy"]}

    def test(self, model, ds, cfg) -> dict:

        result = evaluate(model, ds.test_x, ds.test_y, ds.classes)
        result.update(measure_speed(model, ds.test_x[:1]))
        return result

    def headline(self, result: dict) -> dict:
        return {"test_accuracy": result["accuracy"], "test_loss": result["loss"], "test_macro_f1": result["macro_f1"],
                "latency_ms_b1": result["latency_ms_b1"], "throughput_b256": result["throughput_b256"]}

    def report(self, run_dir: Path, model, ds, result: dict, summary: dict, extra=()) -> Path:

        return write_classifier_report(run_dir, model, ds, result, summary, extra)

    def print_evaluation(self, out, name: str, result: dict) -> None:

        out.print(f"[bold]{name}[/] on {result['dataset']} test ({result['n']} items)")
        table = Table("class", "precision", "recall", "F1")
        for c, m in result["per_class"].items():
            table.add_row(c, f"{m['precision']:.3f}", f"{m['recall']:.3f}", f"{m['f1']:.3f}")
        out.print(table)
        out.print(f"accuracy {result['accuracy']:.4f}  macro F1 {result['macro_f1']:.4f}  loss {result['loss']:.4f}\n"
                  f"latency (batch 1) {result['latency_ms_b1']:.2f} ms  throughput (batch 256) "
                  f"{result['throughput_b256']:,.0f}/s")

    def onnx_threads(self) -> int:
        return 1  # batches of a few images; the event loop needs the other cores

    def warm_up(self, served) -> None:
        dtype = torch.uint8 if len(served.input_shape) == 3 else torch.float32
        for n in (1, 16):
            served.probabilities(torch.zeros((n, *served.input_shape), dtype=dtype))


TASK = ClassifyTask()
