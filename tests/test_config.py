import pytest

from genforge.config import RunConfig, apply_override, dump_config, load_config, preset_names, validate
from genforge.errors import GenforgeError
from genforge.registry import MODELS


def test_every_preset_validates():
    names = preset_names()
    assert {"quickstart", "mnist-cnn", "blobs-logreg", "fashion-cnn-fast", "fashion-cnn"} <= set(names)
    for name in names:
        assert isinstance(load_config(name), RunConfig)


def test_dotted_overrides_parse_yaml_values():
    cfg = load_config("fashion-cnn-fast", ["train.lr=3e-4", "seed=7", "deterministic=true", "model.channels=[8, 16]"])
    assert cfg.train.lr == 3e-4 and cfg.seed == 7 and cfg.deterministic and cfg.model.channels == [8, 16]


def test_override_can_switch_model_kind():
    cfg = load_config("fashion-cnn-fast", ["model={kind: mlp, hidden: [32]}"])
    assert cfg.model.kind == "mlp" and cfg.model.hidden == [32]


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["train.lrr=1"], "unknown config key 'train.lrr'"),
        (["train.epochs=many"], "config key 'train.epochs'"),
        (["train.optimizer=rmsprop"], "'adamw', 'adam', 'sgd' or 'adadelta'"),
        (["model.kind=diffusion"], "model.kind must be one of: " + ", ".join(MODELS)),
        (["model.channels=wide"], "config key 'model.channels'"),
        (["nonsense"], "must look like key=value"),
    ],
)
def test_bad_config_is_one_clear_line(overrides, message):
    with pytest.raises(GenforgeError) as info:
        load_config("fashion-cnn-fast", overrides)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_unknown_preset_lists_the_presets():
    with pytest.raises(GenforgeError, match="unknown preset or config file 'nope'.*fashion-cnn-fast"):
        load_config("nope")


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config("fashion-cnn", ["seed=3"])
    path = tmp_path / "c.yaml"
    path.write_text(dump_config(cfg))
    assert load_config(str(path)) == cfg


def test_apply_override_creates_sections():
    raw = {}
    apply_override(raw, "data.augment.rotation=10")
    assert validate(raw).data.augment.rotation == 10


@pytest.mark.parametrize("value", ["[28]", "[0, 28]", "[28, 5000]", "big"])
def test_image_size_is_two_sides_of_1_to_4096_pixels(value):
    with pytest.raises(GenforgeError, match="config key 'data.image_size") as info:
        load_config("fashion-cnn-fast", [f"data.image_size={value}"])
    assert "\n" not in str(info.value)
    assert load_config("fashion-cnn-fast", ["data.image_size=[32, 48]"]).data.image_size == (32, 48)
    assert load_config("fashion-cnn-fast").data.image_size is None  # the folder's most common size
