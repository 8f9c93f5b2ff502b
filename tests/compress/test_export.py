"""ONNX export, parametrized over the registry: every kind's parts match eager PyTorch in ONNX Runtime on held-out
data (Fashion-MNIST test images, fresh noise), and a run served by ONNX Runtime answers like the eager one."""

import json

import pytest
import torch

from genforge.config import validate
from genforge.errors import GenforgeError
from genforge.models.catalogue import build_model
from genforge.models.vae import CausalConv2d
from genforge.onnx.export import TOLERANCE, OnnxPart, export_run, load_parts, part_inputs, parts_of
from genforge.registry import MODELS
from genforge.runs import LoadedRun

FASHION_META = {"dataset": "fashion-mnist", "classes": [str(i) for i in range(10)], "input_shape": [1, 28, 28],
                "norm_shape": [1, 1, 1]}
BLOBS_META = {"dataset": "blobs", "classes": ["below", "above"], "input_shape": [2], "norm_shape": [2]}
NILE_META = {"dataset": "series:nile", "classes": [], "input_shape": [24], "norm_shape": [1]}
SERIES = {"context": 24, "horizon": 6, "season": 4}
BYTES = {"tokenizer": {"kind": "bytes", "vocab_size": 256}}
LM_META = {"dataset": "fortunes", "classes": [], "input_shape": [32], "norm_shape": [1], **BYTES}
TEXT_CLASSES_META = {**LM_META, "classes": ["art", "ascii-art", "computers"]}
GPT = {"kind": "transformer", "layers": 1, "heads": 2, "width": 16, "context": 32, "vocab_size": 256, "end_token": 30}

# every kind of the registry, with the variants whose graphs differ (conditioning, architecture)
VARIANTS = {
    "logreg": ({"kind": "logreg"}, BLOBS_META),
    "mlp": ({"kind": "mlp", "hidden": [32]}, FASHION_META),
    "cnn": ({"kind": "cnn"}, FASHION_META),
    "fastcnn": ({"kind": "fastcnn", "channels": [8, 16]}, FASHION_META),
    "scatternet": ({"kind": "scatternet"}, FASHION_META),
    "scatternet-cnn": ({"kind": "scatternet", "orientations": 4, "head": "cnn", "width": 8}, FASHION_META),
    "gan": ({"kind": "gan", "arch": "dcgan", "width": 8, "latent_dim": 8, "conditional": True}, FASHION_META),
    "gan-mlp": ({"kind": "gan", "arch": "mlp", "width": 8, "latent_dim": 8}, FASHION_META),
    "vae": ({"kind": "vae", "arch": "conv", "width": 8, "latent_dim": 4}, FASHION_META),
    "vae-mlp-conditional": ({"kind": "vae", "arch": "mlp", "hidden": [32], "latent_dim": 4, "conditional": True},
                            FASHION_META),
    "vae-autoregressive": ({"kind": "vae", "arch": "conv", "width": 8, "latent_dim": 4, "autoregressive": True,
                            "conditional": True}, FASHION_META),  # a third part, without the classes input
    "rowrnn": ({"kind": "rowrnn", "hidden": 16, "bidirectional": True}, FASHION_META),
    "rnn": ({"kind": "rnn", "cell": "lstm", "hidden": 8, **SERIES}, NILE_META),
    "rnn-gru": ({"kind": "rnn", "cell": "gru", "hidden": 8, "layers": 1, **SERIES}, NILE_META),
    **{kind: ({"kind": kind, **SERIES}, NILE_META) for kind in ("naive", "seasonal-naive", "drift", "season-mean")},
    "transformer": (GPT, LM_META),
    "transformer-learned": ({**GPT, "positions": "learned"}, LM_META),  # its step adds positions past the cache
    "transformer-learned-classes": ({**GPT, "positions": "learned", "head": "classes"}, TEXT_CLASSES_META),
}


def test_the_variants_cover_the_registry():
    assert {model["kind"] for model, _ in VARIANTS.values()} == set(MODELS)


def loaded(tmp_path, variant: str) -> LoadedRun:
    """A LoadedRun of a freshly built (untrained) model: export does not care whether weights were trained."""
    model_cfg, meta = VARIANTS[variant]
    cfg = validate({"name": variant, "data": {"name": meta["dataset"]}, "model": model_cfg})
    torch.manual_seed(0)
    mean = torch.full(meta["norm_shape"], 0.3)
    model = build_model(cfg.model, tuple(meta["input_shape"]), len(meta["classes"]), mean, mean + 0.1).eval()
    task = MODELS[cfg.model.kind].task
    for module in model.modules():  # non-trivial BatchNorm statistics, so eval-mode folding is exercised
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
        if isinstance(module, CausalConv2d):  # it starts at zero, which any graph would match
            module.weight.data.normal_(0, 0.3)
        if hasattr(module, "widen"):  # calibrated interval widths, as a trained forecaster has
            module.widen.uniform_(-0.3, 0.3)
    return LoadedRun(tmp_path, cfg, model, {**meta, "task": task.name}, {})


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_part_matches_pytorch_in_onnxruntime(variant, tmp_path, fashion_available):
    run = loaded(tmp_path, variant)
    record = export_run(run, tmp_path / "export", dynamic_batch=True)
    assert set(record["parts"]) == {p.name for p in parts_of(run)}
    for part in parts_of(run):
        entry = record["parts"][part.name]
        assert (tmp_path / "export" / entry["file"]).stat().st_size == entry["bytes"] > 0
        assert entry["max_diff"] <= TOLERANCE
        assert entry["parity_batch"] == 64
    assert json.loads((tmp_path / "export" / "export.json").read_text()) == record

    # the same parts behind the model's own methods: other batch sizes, labels as indices
    eager = loaded(tmp_path, variant)
    load_parts(run, tmp_path / "export")
    assert run.backend == "onnxruntime"
    for part in parts_of(run):
        assert isinstance(getattr(run.model, part.seam), OnnxPart)  # the comparison below is not eager vs eager
        inputs = part_inputs(eager, part, 5, seed=9)
        if len(inputs) == 2 and part.labels:
            inputs = (inputs[0], inputs[1].argmax(1))  # class indices, as the model's callers pass them
        with torch.inference_mode():
            expected = getattr(eager.model, part.seam)(*inputs)
            got = getattr(run.model, part.seam)(*inputs)
        for a, b in zip(expected if isinstance(expected, tuple) else (expected,), got if isinstance(got, tuple) else
                        (got,)):
            torch.testing.assert_close(b, a, atol=TOLERANCE, rtol=TOLERANCE)
    assert ("step" in record["parts"]) == (variant in ("transformer", "transformer-learned"))  # language models
    if "step" in record["parts"]:
        generates_as_pytorch(run, eager)


def generates_as_pytorch(run: LoadedRun, eager: LoadedRun) -> None:
    """A language model's step (step.onnx) takes any number of new tokens after any number of cached positions (none: a
    prompt), so ONNX Runtime runs all of generation: the same greedy tokens as PyTorch, across the rebuild past the
    context (32 here)."""
    assert isinstance(run.model.step, OnnxPart)
    for prompt in ([30], [30, 72, 101, 108, 108, 111]):
        ids = torch.tensor(prompt)
        assert list(run.model.generate(ids, 48, temperature=0)) == list(eager.model.generate(ids, 48, temperature=0))
    tokens = torch.tensor([[30, 72, 101]])
    logits, past = run.model.step(tokens, eager.model.empty_past())
    assert logits.shape == (1, 3, 256) and past.shape == (1, 2, 1, 2, 3, 8)
    torch.testing.assert_close(logits, eager.model(tokens), atol=TOLERANCE, rtol=TOLERANCE)


def test_a_static_export_has_its_batch_size_and_cannot_be_served(tmp_path, fashion_available):
    run = loaded(tmp_path, "fastcnn")
    record = export_run(run, tmp_path / "export", dynamic_batch=False, batch_size=4)
    assert record["batch_size"] == 4 and record["parts"]["model"]["parity_batch"] == 4
    with pytest.raises(GenforgeError, match="--dynamic-batch"):
        load_parts(run, tmp_path / "export")


def test_a_failed_parity_check_saves_nothing(tmp_path, fashion_available):
    run = loaded(tmp_path, "fastcnn")
    with pytest.raises(GenforgeError, match="differs from PyTorch"):
        export_run(run, tmp_path / "export", tolerance=0.0)  # fp32 kernels differ by rounding: never exactly 0
    assert not list((tmp_path / "export").glob("*.onnx*"))


def test_old_opsets_are_refused_with_the_fix(tmp_path):
    with pytest.raises(GenforgeError, match="use 18"):
        export_run(loaded(tmp_path, "fastcnn"), tmp_path / "export", opset=13)
    with pytest.raises(GenforgeError, match="newer than this onnx package knows"):
        export_run(loaded(tmp_path, "fastcnn"), tmp_path / "export", opset=99)
