"""A learner's own photo, prepared for 04_inference.py --image as Fashion-MNIST's images were made.

Keeps safe: the network's input. Any picture file gives a 28x28 image like the data set's (a light
garment on black, trimmed and centred), or one sentence saying why it cannot: a missing file,
one that is not an image, one too large to decode safely, a decoder's own exception.
"""
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError
from torchvision.transforms.functional import pil_to_tensor

from plumbing.errors import fail


def prepare_image(path):
    """A learner's picture made as Fashion-MNIST's were made from catalogue photos (Xiao et al.,
    2017, section 2): negated where its background is light, trimmed, scaled, centred. Returns it
    as the data set's images are, uint8 (1, 28, 28), and a note on what was done to it."""
    path = Path(path).expanduser()
    pixels = _gray_pixels(_open_image(path), path)                      # (H, W) floats, 0 to 255
    border = torch.cat([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    background = border.median().item()
    # Negated, so that a garment on a light background comes out light on black, as in the data
    # set; and scaled so that the background, whatever its shade, becomes 0.
    if background > 127:
        pixels = (background - pixels) * (255 / background)
        note = "negated: its background was light"
    else:
        pixels = (pixels - background) * (255 / max(255 - background, 1))
        note = "as given: its background was dark"
    pixels = pixels.clamp(0, 255)
    # Trimmed to the garment: the pixels further from the background than 5% of full intensity.
    garment = pixels > 0.05 * 255
    canvas = torch.zeros(28, 28)
    if not garment.any():
        note += "; the picture seemed empty: the network sees black"
        return canvas[None].to(torch.uint8), note
    rows, cols = garment.any(dim=1).nonzero().view(-1), garment.any(dim=0).nonzero().view(-1)
    pixels = pixels[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    # Its longest side scaled to 28 pixels, the aspect kept, then centred on a black square.
    h, w = pixels.shape
    size = (max(1, round(28 * h / max(h, w))), max(1, round(28 * w / max(h, w))))
    small = F.interpolate(pixels[None, None], size=size, mode="bilinear", antialias=True)[0, 0]
    top, left = (28 - size[0]) // 2, (28 - size[1]) // 2
    canvas[top:top + size[0], left:left + size[1]] = small
    return canvas.clamp(0, 255).round()[None].to(torch.uint8), note


def _open_image(path):
    """The picture at `path`, decoded (the first frame of several); one sentence if it cannot be."""
    if not path.is_file():
        fail(f"no image file at {path}: check the path given to --image.")
    try:
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image)     # decoded; a photo taken sideways upright
        image.thumbnail((1024, 1024), Image.Resampling.BOX)   # plenty for 28x28, and bounded work
    except UnidentifiedImageError:
        fail(f"{path} is not an image that can be read: pass a PNG or JPEG file to --image.")
    except Image.DecompressionBombError as e:            # PIL's own limit, from the size alone
        fail(f"{path} is too large to decode safely ({e}): scale it down (1000 pixels a side is "
             "plenty) and pass that to --image.")
    except Exception as e:               # each decoder raises its own: all mean "cannot decode"
        fail(f"{path} cannot be decoded ({type(e).__name__}: {e}): save it again as PNG or JPEG "
             "and pass that to --image.")
    return image


def _gray_pixels(image, path):
    """Any PIL image as grayscale floats (H, W) from 0 to 255; transparent parts white, as paper."""
    try:
        if image.mode in ("I", "F") or image.mode.startswith("I;16"):    # 16 and 32 bits a pixel
            pixels = pil_to_tensor(image.convert("F"))[0].nan_to_num(0, 0, 0)   # (H, W)
            low, high = pixels.min(), pixels.max()
            return ((pixels - low) * (255 / (high - low)) if high > low
                    else torch.full_like(pixels, 255.0))
        if image.mode == "LAB":                          # its lightness: no conversion to L here
            image = image.getchannel("L")
        paper = Image.new("RGBA", image.size, "white")
        image = Image.alpha_composite(paper, image.convert("RGBA"))    # any mode: none lost
        return pil_to_tensor(image.convert("L"))[0].float()
    except Exception:
        fail(f"{path} is a {image.mode} image, which cannot be made grayscale here: "
             "save it as PNG or JPEG and pass that to --image.")
