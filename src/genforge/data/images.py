"""Image files -> uint8 pixels, one way for training (imagefolder:PATH) and inference (predict, serve): which files
are read, how pixels that are not 8-bit become 8-bit, and the resize filter.

Pixels are turned upright by the EXIF Orientation tag first: a phone stores a portrait photo as landscape pixels and
a tag that viewers apply, so without it the model would train on (and be asked about) photos lying on their side.

The resize filter is Pillow's BILINEAR: when it reduces, Pillow widens its support by the scale factor, so it
averages every source pixel (antialiased, no aliasing from skipped pixels) without LANCZOS' ringing at sharp edges;
and predict and serve resized inputs with it before image_size existed, so a run's training images and the inputs
it is later given go through the same filter."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from genforge.errors import GenforgeError

FORMATS = ("PNG", "JPEG")
MAX_PIXELS = 89_478_485  # width x height; Pillow's decompression-bomb threshold (Image.MAX_IMAGE_PIXELS, ~0.25 GiB
# as RGBA): Pillow warns past it and refuses past twice it, after the header and before any pixel is decoded
MAX_SIDE = 4096  # pixels, an image's height or width after resizing (data.image_size, a run's input_shape): predict
# and serve decode at most 4096 x 4096
MAX_CHANNELS = 4  # an image's channels: 1 (grayscale) or 3 (RGB) today, 4 left for RGBA
RESAMPLE = Image.Resampling.BILINEAR
SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")  # a 16-bit grayscale PNG opens as I;16 (older Pillow: I)
COLOR_MODES = ("RGB", "RGBA", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV", "RGBa")
ORIENTATION = 0x0112  # the EXIF tag: 1 as stored, 2-8 a flip and/or a turn that ImageOps.exif_transpose applies
SIDEWAYS = (5, 6, 7, 8)  # the orientations that turn by 90 degrees: displayed width = stored height


def open_image(path: Path, name: str, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """A PNG or JPEG file, opened: its header read, no pixel decoded. Refused in one line: what is not a regular file
    (a FIFO would block the open forever), another format, more than max_pixels. Close it (a `with` block)."""
    if not path.is_file():  # follows links: a link to a regular file is read
        raise GenforgeError(f"{name}: {path} is not a regular file (a FIFO, a device or a broken link); remove it")
    try:
        with warnings.catch_warnings():  # the size is checked below, with the file's name
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)
    except Image.DecompressionBombError as e:  # past twice Pillow's limit: refused before a size can be read
        raise GenforgeError(f"{name}: {path}: {_pixels_claimed(str(e))} is too large (at most {max_pixels:,} "
                            f"pixels); resize it first") from None
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise GenforgeError(f"{name}: cannot read image {path} ({e}); fix or remove the file") from None
    if im.format not in FORMATS:
        im.close()
        raise GenforgeError(f"{name}: {path}: a {im.format} image, not PNG or JPEG; convert it (or remove it)")
    if im.width * im.height > max_pixels:
        im.close()
        raise GenforgeError(f"{name}: {path}: {im.width}x{im.height} is too large (at most {max_pixels:,} pixels); "
                            f"resize it first")
    return im


def _pixels_claimed(message: str) -> str:
    """The pixel count in Pillow's bomb error ("Image size (400000000 pixels) exceeds limit of ..."): it gives no
    width and height."""
    digits = message.partition("(")[2].partition(" ")[0]
    return f"{int(digits):,} pixels" if digits.isdigit() else "the image"


def is_color(im: Image.Image) -> bool:
    return im.mode in COLOR_MODES


def _sideways(im: Image.Image) -> bool:
    """Whether the EXIF Orientation turns the image by 90 degrees, from the header: nothing decoded. A PNG's eXIf chunk
    may follow its pixels, and Pillow decodes the whole image to look for one; such a PNG is counted at its stored size
    here (the header pass), and to_pixels, which decodes it anyway, still turns it."""
    if im.format == "PNG" and "exif" not in im.info:
        return False
    return im.getexif().get(ORIENTATION) in SIDEWAYS


def displayed_size(im: Image.Image) -> tuple[int, int]:
    """(H, W) as the image is shown, after its EXIF Orientation: the size to_pixels returns it at without a resize."""
    return (im.width, im.height) if _sideways(im) else (im.height, im.width)


def draft(im: Image.Image, mode: str, size: tuple[int, int]) -> None:
    """Let a JPEG decode reduced (DCT scaling by 1/2, 1/4 or 1/8, never below size=(H, W) as displayed): a 12 MP
    photo in ~1/8 of the time and memory. Only configures the decoder; nothing is decoded."""
    if im.format == "JPEG":
        h, w = size
        im.draft(mode, (h, w) if _sideways(im) else (w, h))  # Pillow's (width, height) of the stored pixels


def to_pixels(im: Image.Image, mode: str, size: tuple[int, int] | None = None, name: str = "image") -> np.ndarray:
    """An opened image -> uint8 (H, W) for mode "L" or (H, W, 3) for "RGB", turned upright by its EXIF Orientation,
    resized to size=(H, W) with RESAMPLE.

    Pixels that are not 8-bit are mapped by their declared range, never clipped: 16-bit grayscale by v / 257
    rounded (0-65535 onto 0-255, the inverse of the 8-to-16-bit v * 257); 1-bit to 0 and 255. Transparent areas become
    black, the background of the digit and clothing data the models learn from. Float pixels have no declared range:
    refused."""
    if size is not None:
        draft(im, mode, size)
    im.load()  # a truncated or corrupt file raises OSError here: the caller names the file
    ImageOps.exif_transpose(im, in_place=True)  # upright, as displayed; a no-op without the tag
    if im.mode in SIXTEEN_BIT:
        values = np.asarray(im, dtype=np.int64)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise GenforgeError(f"{name}: {im.mode} pixels outside 0-65535; save it as an 8- or 16-bit PNG")
        im = Image.fromarray(((values + 128) // 257).astype(np.uint8))  # (H, W) uint8: mode L
    elif im.mode == "F":
        raise GenforgeError(f"{name}: 32-bit float pixels have no fixed range to map to 0-255; save it as an 8- or "
                            f"16-bit PNG")
    elif im.mode in ("RGBA", "LA", "PA", "RGBa", "La", "P") or "transparency" in im.info:
        im = Image.alpha_composite(Image.new("RGBA", im.size, (0, 0, 0, 255)), im.convert("RGBA"))
    im = im.convert(mode)
    if size is not None and im.size != (size[1], size[0]):
        im = im.resize((size[1], size[0]), RESAMPLE)
    return np.asarray(im, dtype=np.uint8)


def light_border(x: np.ndarray) -> bool:
    """Whether uint8 grayscale images (..., H, W) have a light one-pixel border on average (a dark drawing on paper):
    recorded for a run's training split (meta.json's light_background) and asked of each upload, so predict and serve
    invert an upload only when its background differs from the one the model was trained on."""
    edges = (x[..., 0, :], x[..., -1, :], x[..., :, 0], x[..., :, -1])  # corners twice, as predict always counted
    n = sum(e.size for e in edges)
    return n > 0 and sum(float(e.sum(dtype=np.float64)) for e in edges) / n > 127
