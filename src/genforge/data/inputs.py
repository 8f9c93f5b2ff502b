"""Turn user files (PNG, JPEG, .npy) into a raw uint8 batch of the model's input shape, validated at the edge."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from genforge.data.images import draft, light_border, to_pixels
from genforge.errors import GenforgeError

MAX_PIXELS = 4096 * 4096  # refuse larger images before decoding them (decompression bombs)


def decode_image(source: bytes | Path, shape: tuple[int, int, int], name: str = "image",
                 max_pixels: int = MAX_PIXELS, light_background: bool = False) -> np.ndarray:
    """PNG or JPEG (a path or the file's bytes) -> uint8 (C, H, W) resized to the model's input.

    The header is checked before any pixel is decoded: format, then width x height against max_pixels, the
    pixels held in memory once decoded. A JPEG is decoded reduced (DCT scaling, up to 1/8 per side, never below
    the model's size), so its header may claim up to 64x max_pixels. A grayscale image gets its training data's
    background: light_background is the run's meta.json key (absent: False, MNIST-style light on black), and an
    image whose border is light when the training data's was dark (a drawing on paper for an MNIST-style model), or
    dark when it was light, is inverted."""


    c, h, w = shape
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as im:
            if im.format not in ("PNG", "JPEG"):
                raise GenforgeError(f"{name}: {im.format} images are not supported; use PNG or JPEG")
            if im.width * im.height <= 64 * max_pixels:
                draft(im, "L" if c == 1 else "RGB", (h, w))  # only configures the decoder: nothing decoded yet
            if im.width * im.height > max_pixels:
                raise GenforgeError(f"{name}: {im.width}x{im.height} is too large (at most {max_pixels:,} pixels); "
                                    f"resize it first")
            arr = to_pixels(im, "L" if c == 1 else "RGB", (h, w), name)  # as training reads images: upright by
            # EXIF, 16-bit by range, transparency over black, the same resize filter
    except Image.DecompressionBombError:  # Pillow's own header check, for sizes far past max_pixels
        raise GenforgeError(f"{name}: the image is too large (at most {max_pixels:,} pixels); resize it first"
                            ) from None
    except UnidentifiedImageError:
        raise GenforgeError(f"{name}: not a readable PNG or JPEG (not an image, or cut short)") from None
    except (OSError, ValueError) as e:
        raise GenforgeError(f"{name}: not a readable PNG or JPEG ({e})") from None
    if c == 1:
        arr = 255 - arr if light_border(arr) != light_background else arr
        return arr[None]  # (1, H, W)
    return arr.transpose(2, 0, 1)  # (C, H, W)


def _load_npy(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:  # EOFError: an empty file
        raise GenforgeError(f"{path}: not a readable .npy file ({e or 'empty'})") from None
    if arr.ndim == len(shape) and len(shape) > 1 or arr.shape == tuple(shape):
        arr = arr[None] if arr.shape == tuple(shape) else arr
    if len(shape) == 3 and shape[0] == 1 and arr.ndim == 3:
        arr = arr[:, None]  # (N, H, W) -> (N, 1, H, W)
    if arr.shape[1:] != tuple(shape):
        raise GenforgeError(f"{path}: shape {arr.shape} does not fit the model's input {tuple(shape)} (N first)")
    if len(arr) == 0:
        raise GenforgeError(f"{path}: holds no inputs (shape {arr.shape})")
    if not np.issubdtype(arr.dtype, np.number) or not np.isfinite(arr).all():
        raise GenforgeError(f"{path}: values must be finite numbers")
    if len(shape) == 3:
        if arr.min() < 0 or arr.max() > 255:
            raise GenforgeError(f"{path}: pixel values must lie in 0-255")
        return arr.astype(np.uint8)
    with np.errstate(over="ignore"):
        vectors = arr.astype(np.float32)  # what the model sees: 1e300 is finite in float64 and inf here
    if not np.isfinite(vectors).all():
        raise GenforgeError(f"{path}: values must fit in float32 (magnitude at most {np.finfo(np.float32).max:.3g})")
    return vectors


def load_inputs(files: list[Path], shape: tuple[int, ...], light_background: bool = False) -> torch.Tensor:
    """A batch in input order: every .npy contributes its N items, every image one (decode_image: light_background
    is the run's meta.json key)."""
    parts = []
    for path in files:
        if not path.is_file():
            raise GenforgeError(f"{path}: no such file")
        if path.suffix.lower() == ".npy":
            parts.append(_load_npy(path, shape))
        elif len(shape) == 3:
            parts.append(decode_image(path, shape, name=str(path), light_background=light_background)[None])
        else:
            raise GenforgeError(f"{path}: this model takes feature vectors; give a .npy of shape (N, {shape[0]})")
    return torch.from_numpy(np.concatenate(parts))
