"""A user's own files (imagefolder:PATH, csv:PATH) as spreadsheets and cameras write them: a byte-order mark, 16-bit
and transparent PNGs, photos of many sizes, infinities, and the files that used to hang or end in a traceback."""

import json
import os
import struct
import threading
import zlib

import numpy as np
import pytest
from PIL import Image

from genforge.data import data_info, load_dataset
from genforge.errors import GenforgeError


def _png(path, size=(6, 5), mode="L", value=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value).save(path)
    return path


def _folder(root, images: dict[str, list[Image.Image]]):
    """root/<class>/<i>.png for each class's images; returns root as an imagefolder: spec."""
    for c, ims in images.items():
        (root / c).mkdir(parents=True, exist_ok=True)
        for i, im in enumerate(ims):
            im.save(root / c / f"{i}.png")
    return f"imagefolder:{root}"


def _classes_of(n: int, size=(6, 5), mode="L", value=0) -> dict[str, list[Image.Image]]:
    return {c: [Image.new(mode, size, value) for _ in range(n)] for c in ("a", "b")}


# --- CSV: the byte-order mark, the label column, non-finite values, long fields -----------------------------------

def _labelled_csv(path, header="label,f1,f2", bom=False):
    rng = np.random.default_rng(0)
    rows = [header] + [f"{'yes' if a > 0 else 'no'},{a:.3f},{b:.3f}" for a, b in rng.normal(size=(40, 2))]
    path.write_bytes(("\ufeff" if bom else "").encode() + ("\n".join(rows) + "\n").encode())
    return f"csv:{path}"


def test_a_csv_saved_with_a_byte_order_mark_keeps_its_label_column(tmp_path):
    """Excel's "CSV UTF-8" starts with U+FEFF: `label` read as '\ufefflabel' was not found and f2 (40 distinct
    numbers) silently became the label."""
    ds = load_dataset(_labelled_csv(tmp_path / "excel.csv", bom=True))
    assert ds.classes == ["no", "yes"] and ds.input_shape == (2,)
    info = data_info(ds)
    assert info["label_column"] == "label"


def test_the_label_column_is_found_by_name_in_any_case_and_its_absence_is_refused(tmp_path):
    ds = load_dataset(_labelled_csv(tmp_path / "a.csv", header="Label,f1,f2"))
    assert ds.classes == ["no", "yes"] and data_info(ds)["label_column"] == "Label"
    spec = _labelled_csv(tmp_path / "b.csv", header="kind,f1,f2")  # no `label`: the last column used to be it
    with pytest.raises(GenforgeError, match=r"no `label` column \(the columns are kind, f1, f2\)") as e:
        load_dataset(spec)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("value", ["inf", "-inf", "1e999", "Infinity", "nan", "1e39"])
def test_a_feature_csv_refuses_values_that_are_not_finite_in_float32(tmp_path, value):
    path = tmp_path / "d.csv"
    path.write_text("f1,f2,label\n1,2,a\n3,4,b\n5," + value + ",a\n7,8,b\n")
    with pytest.raises(GenforgeError, match=rf"line 4 of .*column 'f2' is '{value}'") as e:
        load_dataset(f"csv:{path}")
    assert "finite" in str(e.value) and "\n" not in str(e.value)


def test_a_csv_field_past_the_csv_modules_limit_is_one_line(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text('f1,label\n1,a\n2,"' + "x" * 200_000 + '"\n3,b\n')  # an unclosed quote reads like this
    with pytest.raises(GenforgeError, match=r"line 3 of .*longer than 131,072 characters") as e:
        load_dataset(f"csv:{path}")
    assert "\n" not in str(e.value)


def test_data_info_names_the_label_column(tmp_path, capsys, monkeypatch):
    from helpers import run_cli

    code, out, err = run_cli(capsys, monkeypatch, "data", "info", _labelled_csv(tmp_path / "x.csv", bom=True),
                             "--json")
    assert code == 0, err
    assert json.loads(out)["label_column"] == "label"


# --- images: modes that are not 8-bit, sizes, and files that are not images ----------------------------------------

def _sixteen_bit(levels: np.ndarray) -> Image.Image:
    """A 16-bit grayscale PNG image whose 8-bit levels are `levels` (v * 257 spans 0-65535)."""
    return Image.fromarray(levels.astype(np.uint16) * 257)  # uint16: mode I;16


def test_a_16_bit_grayscale_png_keeps_its_levels(tmp_path):
    """Pillow's convert("L") clips 16-bit values at 255: every pixel above 255/65535 used to load white."""
    levels = np.arange(30, dtype=np.uint8).reshape(5, 6) * 8
    spec = _folder(tmp_path, {"a": [_sixteen_bit(levels)] * 3, "b": [_sixteen_bit(255 - levels)] * 3})
    ds = load_dataset(spec)
    x = np.concatenate([ds.train_x.numpy(), ds.test_x.numpy()])
    y = np.concatenate([ds.train_y.numpy(), ds.test_y.numpy()])
    assert x.shape[1:] == (1, 5, 6)
    np.testing.assert_array_equal(x[y == 0][:, 0], np.broadcast_to(levels, (3, 5, 6)))
    np.testing.assert_array_equal(x[y == 1][:, 0], np.broadcast_to(255 - levels, (3, 5, 6)))
    assert data_info(ds)["image_modes"] == {"I;16": 6}


def _rgba(alpha: int) -> Image.Image:
    return Image.new("RGBA", (6, 5), (200, 100, 50, alpha))


@pytest.mark.parametrize(("image", "expected"), [
    (Image.new("1", (6, 5), 1), 255),  # 1-bit: white stays white
    (Image.new("LA", (6, 5), (200, 0)), 0),  # fully transparent: the black background, as predict and serve see it
    (Image.new("LA", (6, 5), (200, 255)), 200),
    (Image.new("P", (6, 5), 3), None),  # a palette image: its colour
])
def test_other_modes_load_as_their_8_bit_values(tmp_path, image, expected):
    if image.mode == "P":
        image.putpalette([0, 0, 0] * 3 + [10, 20, 30] + [0, 0, 0] * 252)
    spec = _folder(tmp_path, {"a": [image] * 2, "b": [image] * 2})
    ds = load_dataset(spec)
    px = ds.train_x[0]
    if image.mode == "P":
        assert px.shape[0] == 3 and px[:, 0, 0].tolist() == [10, 20, 30]
    else:
        assert px.shape[0] == 1 and int(px.max()) == int(px.min()) == expected


def test_transparent_rgba_is_composited_over_black_as_predict_does(tmp_path):
    from genforge.data.inputs import decode_image

    spec = _folder(tmp_path, {"a": [_rgba(0)] * 2, "b": [_rgba(128)] * 2})
    ds = load_dataset(spec)
    x = np.concatenate([ds.train_x.numpy(), ds.test_x.numpy()])
    y = np.concatenate([ds.train_y.numpy(), ds.test_y.numpy()])
    assert (x[y == 0] == 0).all()  # transparent: black (its RGB values used to show through)
    for path in sorted((tmp_path / "b").iterdir()):
        np.testing.assert_array_equal(decode_image(path, (3, 5, 6)), x[y == 1][0])


def test_a_16_bit_png_reaches_predict_as_its_levels_too(tmp_path):
    from genforge.data.inputs import decode_image

    levels = np.arange(30, dtype=np.uint8).reshape(5, 6)  # dark: not inverted by predict's light-border rule
    path = tmp_path / "x.png"
    _sixteen_bit(levels).save(path)
    np.testing.assert_array_equal(decode_image(path, (1, 5, 6))[0], levels)


def test_a_float_image_or_another_format_is_refused_naming_the_file(tmp_path):
    spec = _folder(tmp_path, _classes_of(2))
    Image.new("F", (6, 5), 0.5).save(tmp_path / "a" / "float.png", format="TIFF")  # a TIFF named .png
    with pytest.raises(GenforgeError, match=r"float\.png: a TIFF image") as e:
        load_dataset(spec)
    assert "PNG or JPEG" in str(e.value) and "\n" not in str(e.value)


def test_images_of_different_sizes_are_resized_to_the_most_common_or_the_configured_size(tmp_path):
    images = {"a": [Image.new("L", (6, 5), 10)] * 3 + [Image.new("L", (12, 10), 10)],
              "b": [Image.new("L", (6, 5), 90)] * 3 + [Image.new("L", (9, 9), 90)]}
    spec = _folder(tmp_path, images)
    ds = load_dataset(spec)
    assert ds.input_shape == (1, 5, 6)  # (C, H, W): the most common size
    info = data_info(ds)
    assert info["image_sizes"] == {"5x6": 6, "10x12": 1, "9x9": 1}  # height x width, the most common first
    assert info["image_size"] == [5, 6] and info["resized"] == 2
    x = np.concatenate([ds.train_x.numpy(), ds.test_x.numpy()])
    assert set(np.unique(x)) == {10, 90}  # a constant image stays that constant after resizing
    ds = load_dataset(spec, image_size=(8, 4))
    assert ds.input_shape == (1, 8, 4) and data_info(ds)["resized"] == 8


def test_training_and_predict_resize_an_image_alike(tmp_path):
    """predict and serve resize inputs to the run's input_shape (meta.json) with decode_image: the same filter."""
    from genforge.data.inputs import decode_image

    rng = np.random.default_rng(0)
    ims = [Image.fromarray(rng.integers(0, 100, (h, w), dtype=np.uint8)) for h, w in ((20, 30), (7, 9), (5, 6))]
    spec = _folder(tmp_path, {"a": ims, "b": ims})  # pixel values < 100: a dark border, so predict does not invert
    ds = load_dataset(spec, image_size=(8, 12))
    loaded = {bytes(x.numpy()) for x in (*ds.train_x, *ds.test_x)}
    for path in sorted((tmp_path / "a").iterdir()):
        assert bytes(decode_image(path, (1, 8, 12))) in loaded


def test_image_size_is_for_image_folders(tmp_path):
    with pytest.raises(GenforgeError, match="data.image_size resizes imagefolder:PATH images"):
        load_dataset("blobs", image_size=(8, 8))


def test_the_task_loads_the_configured_image_size(tmp_path):
    from genforge.config import load_config
    from genforge.registry import task_of

    spec = _folder(tmp_path, _classes_of(3))
    cfg = load_config("fashion-cnn-fast", [f"data.name={spec}", "data.image_size=[4, 4]"])
    assert task_of(cfg.model.kind).dataset(cfg).input_shape == (1, 4, 4)


def _huge_png(path, width=20_000, height=20_000):
    """A PNG whose header claims width x height (the pixel data is one row: nothing past the header is read)."""
    _png(path, size=(1, 1))
    data = bytearray(path.read_bytes())
    data[16:24] = struct.pack(">II", width, height)  # IHDR's width and height, then its CRC over type + data
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("side", [20_000, 10_000])  # past twice Pillow's bomb limit (an error), past it (a warning)
def test_a_decompression_bomb_is_one_line_naming_the_file(tmp_path, side):
    spec = _folder(tmp_path, _classes_of(2))
    _huge_png(tmp_path / "b" / "huge.png", side, side)
    claimed = f"{side}x{side}" if side == 10_000 else "400,000,000 pixels"  # Pillow's error gives only the count
    with pytest.raises(GenforgeError, match=rf"huge\.png: {claimed} is too large \(at most 89,478,485") as e:
        load_dataset(spec)
    assert "\n" not in str(e.value)


def test_a_folder_of_photos_past_4096_pixels_a_side_asks_for_image_size(tmp_path):
    """The default size is recorded in the run's config.yaml, whose data.image_size takes at most 4096 a side: a folder
    of 48 MP photos is refused before decoding, with a size to give instead."""
    spec = _folder(tmp_path, _classes_of(1))
    for c in ("a", "b"):
        for i in range(2):
            _huge_png(tmp_path / c / f"big{i}.png", width=8000, height=6000)
    with pytest.raises(GenforgeError, match=r"most images are 6000x8000, past the 4096 pixels .* e\.g\. \[192, 256\]"):
        load_dataset(spec)


def test_more_classes_than_a_run_holds_are_refused_before_training():
    from genforge.data.dataset import MAX_CLASSES, make_dataset

    x, y = np.zeros((2, 3), dtype=np.float32), np.zeros(2, dtype=np.int64)
    with pytest.raises(GenforgeError, match="65,537 classes, more than the 65,536 a classifier takes"):
        make_dataset("csv:x.csv", x, y, x, y, [str(i) for i in range(MAX_CLASSES + 1)], "x.csv")


def test_data_info_on_a_bomb_exits_2_with_one_line(tmp_path, capsys, monkeypatch):
    from helpers import run_cli

    spec = _folder(tmp_path, _classes_of(2))
    _huge_png(tmp_path / "a" / "huge.png")
    code, _, err = run_cli(capsys, monkeypatch, "data", "info", spec)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "huge.png" in lines[0] and "Traceback" not in err, err


def test_a_fifo_named_like_an_image_is_refused_not_waited_on(tmp_path):
    spec = _folder(tmp_path, _classes_of(2))
    os.mkfifo(tmp_path / "a" / "x.png")
    outcome = []

    def load():
        try:
            load_dataset(spec)
            outcome.append("loaded")
        except GenforgeError as e:
            outcome.append(str(e))

    thread = threading.Thread(target=load, daemon=True)  # the old loader blocked forever opening the FIFO
    thread.start()
    thread.join(20)
    assert not thread.is_alive(), "load_dataset hung on a FIFO"
    assert "x.png is not a regular file" in outcome[0]


def test_hidden_files_are_skipped(tmp_path):
    spec = _folder(tmp_path, _classes_of(2))
    (tmp_path / "a" / "._0.png").write_bytes(b"\x00\x05\x16\x07")  # macOS's AppleDouble companion of 0.png
    assert len(load_dataset(spec).classes) == 2


def test_data_info_reports_the_sizes_found_and_takes_image_size(tmp_path, capsys, monkeypatch):
    from helpers import run_cli

    spec = _folder(tmp_path, {"a": [Image.new("L", (6, 5))] * 2 + [Image.new("L", (8, 8))],
                              "b": [Image.new("L", (6, 5), 200)] * 2})
    code, out, err = run_cli(capsys, monkeypatch, "data", "info", spec, "--json")
    assert code == 0, err
    info = json.loads(out)
    assert info["image_sizes"] == {"5x6": 4, "8x8": 1} and info["image_size"] == [5, 6] and info["resized"] == 1
    code, out, err = run_cli(capsys, monkeypatch, "data", "info", spec, "image_size=[8, 8]", "--json")
    assert code == 0 and json.loads(out)["input_shape"] == [1, 8, 8], err
    code, _, err = run_cli(capsys, monkeypatch, "data", "info", spec, "image_size=[0, 8]")
    assert code == 2 and err.count("\n") == 1 and "data.image_size" in err, err
    code, _, err = run_cli(capsys, monkeypatch, "data", "info", spec, "fill=ffill")
    assert code == 2 and "image_size=[H,W] for imagefolder" in err, err


def test_a_cmyk_jpeg_loads_as_its_rgb_colour(tmp_path):
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        for i in range(2):  # red: C=0, M=255, Y=255, K=0
            Image.new("CMYK", (6, 5), (0, 255, 255, 0)).save(tmp_path / c / f"{i}.jpg", quality=100)
    ds = load_dataset(f"imagefolder:{tmp_path}")
    assert ds.input_shape == (3, 5, 6) and ds.train_x[0, :, 0, 0].tolist() == [255, 0, 0]
    assert data_info(ds)["image_modes"] == {"CMYK": 4}


# --- EXIF orientation: a phone stores a portrait photo as landscape pixels plus a tag that turns it for display ----

def _turned(path, displayed: Image.Image, orientation: int = 6):
    """A JPEG (or a PNG, by the path's suffix) whose pixels are `displayed` turned back the way a camera stores them,
    with the EXIF Orientation tag (6: rotate 90 degrees clockwise to display) that a viewer applies."""
    stored = displayed.transpose(Image.Transpose.ROTATE_90)  # counter-clockwise: undone by the tag's clockwise turn
    exif = Image.Exif()
    exif[0x0112] = orientation  # EXIF Orientation
    path.parent.mkdir(parents=True, exist_ok=True)
    stored.save(path, quality=100, exif=exif)
    return path


def _portrait() -> Image.Image:
    """32 high, 16 wide: the top half grey (160), the bottom half black (dark: predict does not invert it)."""
    px = np.zeros((32, 16), dtype=np.uint8)
    px[:16] = 160
    return Image.fromarray(px)


@pytest.mark.parametrize("suffix", ["jpg", "png"])
def test_exif_orientation_turns_a_photo_upright_in_training_and_predict_alike(tmp_path, suffix):
    from genforge.data.inputs import decode_image

    for c in ("a", "b"):
        for i in range(2):
            _turned(tmp_path / c / f"{i}.{suffix}", _portrait())
    ds = load_dataset(f"imagefolder:{tmp_path}")
    assert ds.input_shape == (1, 32, 16)  # the displayed size (height x width), not the stored 16 x 32
    assert data_info(ds)["image_sizes"] == {"32x16": 4}
    x = ds.train_x[0, 0].numpy().astype(int)
    assert abs(x[:14].mean() - 160) < 3 and x[18:].mean() < 3  # upright: grey above, black below
    for path in sorted((tmp_path / "a").iterdir()):
        np.testing.assert_array_equal(decode_image(path, (1, 32, 16))[0], x)


def test_a_turned_jpeg_is_decoded_reduced_in_its_stored_orientation(tmp_path):
    """A JPEG is decoded at 1/2, 1/4 or 1/8 of its size where the target allows; for a turned photo the target's
    height is the stored width. 64 x 512 displayed, decoded for 8 x 64: no reduction may take its 64 columns."""
    from genforge.data.images import RESAMPLE
    from genforge.data.inputs import decode_image

    px = np.zeros((512, 64), dtype=np.uint8)
    px[:, ::8] = px[:, 1::8] = px[:, 2::8] = px[:, 3::8] = 150  # vertical stripes 4 pixels wide
    path = _turned(tmp_path / "x.jpg", Image.fromarray(px))
    expected = np.asarray(Image.fromarray(px).resize((64, 8), RESAMPLE), dtype=int)
    assert np.abs(decode_image(path, (1, 8, 64))[0].astype(int) - expected).max() <= 4


def test_the_size_pass_decodes_no_png_to_find_its_orientation(tmp_path):
    """Pillow's PNG getexif decodes the whole image to look for an eXIf chunk after the pixels: the folder's first pass
    reads headers only (a folder of large PNGs would be decoded twice)."""
    from genforge.data.images import displayed_size

    with Image.open(_huge_png(tmp_path / "x.png", width=300, height=200)) as im:  # decoding it would fail: cut short
        assert displayed_size(im) == (200, 300)


def _noisy(size, value, rng) -> Image.Image:
    """A size=(W, H) grayscale image around `value`: a class's images, told apart by their level."""
    return Image.fromarray(np.clip(rng.normal(value, 10, size[::-1]), 0, 255).astype(np.uint8))


def test_a_run_records_the_size_it_chose_so_another_folder_is_resized_to_it(tmp_path, capsys, monkeypatch):
    """data.image_size left at its default (the folder's most common size) is written to the run's config.yaml as the
    size chosen: `evaluate --data` on a folder of another size then resizes it to the trained size, not to that
    folder's own most common one (a mismatch with input_shape, refused)."""
    import yaml
    from helpers import run_cli, train_run

    rng = np.random.default_rng(0)
    train = _folder(tmp_path / "train", {c: [_noisy((20, 20), v, rng) for _ in range(10)] + [_noisy((24, 24), v, rng)]
                                         for c, v in (("a", 40), ("b", 200))})
    other = _folder(tmp_path / "other", {c: [_noisy((30, 30), v, rng) for _ in range(5)]
                                         for c, v in (("a", 40), ("b", 200))})
    run = train_run(tmp_path / "runs", "blobs-logreg", f"data.name={train}", "train.epochs=1", "train.threads=1",
                    "train.batch_size=8")
    assert yaml.safe_load((run / "config.yaml").read_text())["data"]["image_size"] == [20, 20]
    code, out, err = run_cli(capsys, monkeypatch, "evaluate", run, "--data", other, "--json")
    assert code == 0, err
    assert json.loads(out)["dataset"] == other


def test_a_folder_run_evaluates_on_a_built_in_dataset_of_its_shape(tmp_path, capsys, monkeypatch, fashion_available):
    """The run's recorded image size resizes folders only: a built-in dataset of the same shape (28x28 grayscale)
    is evaluated as it is, not refused for carrying data.image_size."""
    from helpers import run_cli, train_run

    rng = np.random.default_rng(0)
    train = _folder(tmp_path / "train", {str(c): [_noisy((28, 28), 20 * c, rng) for _ in range(3)] for c in range(10)})
    run = train_run(tmp_path / "runs", "blobs-logreg", f"data.name={train}", "train.epochs=1", "train.threads=1",
                    "train.batch_size=8")
    code, out, err = run_cli(capsys, monkeypatch, "evaluate", run, "--data", "fashion-mnist", "--json")
    assert code == 0, err
    assert json.loads(out)["dataset"] == "fashion-mnist"


def _drawings(root, background: int, rng):
    """An imagefolder of 8x8 drawings on a `background` (a class's square darker or lighter by its level)."""
    def drawing(level):
        px = np.clip(rng.normal(background, 5, (8, 8)), 0, 255)
        px[2:6, 2:6] = level
        return Image.fromarray(px.astype(np.uint8))
    return _folder(root, {c: [drawing(v) for _ in range(6)] for c, v in (("a", 60), ("b", 120))})


def test_predict_and_serve_invert_an_upload_only_when_its_background_differs_from_the_training_data(
        tmp_path, capsys, monkeypatch):
    """Uploads used to be inverted whenever their border was light (MNIST-style data is light on black): a run trained
    on dark drawings on white paper then classified its own training images inverted, a 200 with a wrong answer.
    meta.json records the training split's background; a run without the key is light-on-dark, as before."""
    import torch
    from fastapi.testclient import TestClient
    from helpers import run_cli, train_run

    from genforge.evaluate.classification import predict_proba
    from genforge.runs import load_run
    from genforge.serve.adapters import load_models
    from genforge.serve.app import create_app

    rng = np.random.default_rng(0)
    quick = ["train.epochs=1", "train.threads=1", "train.batch_size=8"]
    light = train_run(tmp_path / "runs", "blobs-logreg", f"data.name={_drawings(tmp_path / 'paper', 235, rng)}",
                      "name=paper", *quick)
    dark = train_run(tmp_path / "runs", "blobs-logreg", f"data.name={_drawings(tmp_path / 'ink', 15, rng)}",
                     "name=ink", *quick)
    assert json.loads((light / "meta.json").read_text())["light_background"] is True
    assert json.loads((dark / "meta.json").read_text())["light_background"] is False

    path = tmp_path / "paper" / "a" / "0.png"
    trained = np.array(Image.open(path))  # what training read: 8x8, no resize
    ds = load_dataset(f"imagefolder:{tmp_path / 'paper'}")
    assert bytes(trained) in {bytes(x.numpy()) for x in (*ds.train_x, *ds.test_x)}
    code, out, err = run_cli(capsys, monkeypatch, "predict", light, path, "--json")
    assert code == 0, err
    expected = predict_proba(load_run(light).model, torch.from_numpy(trained)[None, None])[0]
    np.testing.assert_allclose(json.loads(out)["predictions"][0]["probabilities"], expected.tolist(), atol=1e-5)

    def seen(run) -> np.ndarray:  # the input the served model saw for the PNG at `path`
        models = load_models([run], backend="torch")
        with TestClient(create_app(models)) as client:
            r = client.post(f"/v1/models/{next(iter(models))}/classify?echo_input=true",
                            files={"file": ("x.png", path.read_bytes(), "image/png")})
        assert r.status_code == 200, r.text
        return np.array(r.json()["predictions"][0]["input"], dtype=np.uint8)

    np.testing.assert_array_equal(seen(light), trained)  # kept as it was trained on
    np.testing.assert_array_equal(seen(dark), 255 - trained)  # a light-border upload on a dark-background run
    meta = json.loads((light / "meta.json").read_text())
    del meta["light_background"]  # a run trained before the key: light-on-dark assumed, as before
    (light / "meta.json").write_text(json.dumps(meta))
    np.testing.assert_array_equal(seen(light), 255 - trained)
