"""Guards a learner's own picture for 04_inference.py --image: any file gives a 28x28 image in
[-1, 1], the garment negated, trimmed, scaled and centred, or one sentence that says why not."""
import contextlib
import io
from unittest import mock

import torch
from PIL import Image

from tests.tiny import TinyDataTestCase, inference, prepared_photo


def picture_battery():
    """(name, bytes) of 60 pictures: sizes from 1x1 to 2400x1800, every mode a file can hold,
    uniform, transparent, random and drawn content, several frames, an EXIF rotation."""
    g = torch.Generator().manual_seed(0)

    def noise(mode, size):
        pixels = torch.randint(0, 256, (size[0] * size[1],), generator=g, dtype=torch.uint8)
        return Image.frombytes("L", size, pixels.numpy().tobytes()).convert(mode)

    def drawn(mode, size):
        image = Image.new("RGB", size, "white")
        w, h = size
        image.paste((60, 40, 30),
                    (w // 4, h // 5, max(w // 4 + 1, 3 * w // 4), max(h // 5 + 1, 4 * h // 5)))
        return image.convert(mode)

    def save(image, fmt, **kwargs):
        buffer = io.BytesIO()
        image.save(buffer, format=fmt, **kwargs)
        return buffer.getvalue()

    pictures = []
    for size in ((1, 1), (2, 3), (28, 28), (300, 200), (2400, 1800)):
        for fill in ("white", "black", (128, 128, 128)):
            pictures.append((f"uniform {fill} {size}", save(Image.new("RGB", size, fill), "PNG")))
        pictures.append((f"transparent {size}", save(Image.new("RGBA", size, (0, 0, 0, 0)), "PNG")))
        noisy = size if size[0] <= 300 else (600, 450)          # random pixels are slow to compress
        pictures.append((f"noise {noisy}", save(noise("L", noisy), "PNG")))
        pictures.append((f"drawn {size}", save(drawn("RGB", size), "JPEG")))
    size = (120, 90)
    for mode, fmt in (("1", "PNG"), ("L", "PNG"), ("LA", "PNG"), ("P", "PNG"), ("P", "GIF"),
                      ("RGB", "BMP"),
                      ("RGBA", "PNG"), ("RGBA", "WEBP"), ("CMYK", "JPEG"), ("CMYK", "TIFF"),
                      ("I;16", "PNG"),
                      ("I", "TIFF"), ("F", "TIFF"), ("LAB", "TIFF"), ("YCbCr", "JPEG")):
        for content in (drawn, noise):
            pictures.append((f"{content.__name__} {mode} {fmt}", save(content(mode, size), fmt)))
    p = drawn("P", size)
    pictures.append(("P with a transparent colour", save(p, "PNG", transparency=0)))
    pictures.append(("16-bit uniform", save(Image.new("I;16", size, 40000), "PNG")))
    frames = [drawn("RGB", size), Image.new("RGB", size, "white"), noise("RGB", size)]
    pictures.append(("animated PNG",
                     save(frames[0], "PNG", save_all=True, append_images=frames[1:])))
    pictures.append(("animated GIF",
                     save(frames[0], "GIF", save_all=True, append_images=frames[1:])))
    exif = Image.Exif()
    # orientation: rotate 90 degrees to view
    exif[0x0112] = 6
    pictures.append(("EXIF-rotated JPEG", save(drawn("RGB", (90, 120)), "JPEG", exif=exif)))
    return pictures


class PhotoTests(TinyDataTestCase):
    def prepare(self, path):
        """prepare_image's answer: ("image", tensor, note) or ("refused", status, stderr)."""
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            try:
                img, note = prepared_photo(path)
                return "image", img, note
            except SystemExit as e:
                return "refused", e.code, err.getvalue()

    def test_a_light_photo_is_negated_trimmed_to_its_garment_scaled_to_28_pixels_and_centred(self):
        photo = Image.new("RGB", (120, 60), "white")       # wide: it must keep its aspect ratio
        photo.paste((40, 40, 90), (30, 10, 90, 50))         # a dark garment
        path = self.tmp / "photo.png"
        photo.save(path)
        img, note = prepared_photo(path)
        self.assertIn("negated", note)
        self.assertEqual(img.shape, (1, 1, 28, 28))
        self.assertEqual(img[0, 0, 0, 0].item(), -1.0)           # background now black
        self.assertGreater(img[0, 0, 14, 14].item(), 0.0)         # garment now light
        # Trimmed to the 60x40 garment and scaled to 28x19 (aspect kept), black rows above and
        # below.
        garment = img[0, 0] > -1
        self.assertEqual((garment.any(dim=1).sum().item(), garment.any(dim=0).sum().item()),
                         (19, 28))
        photo = Image.new("RGB", (200, 150), "white")
        photo.paste((30, 30, 60), (10, 5, 50, 85))          # 40x80 pixels, in the top left corner
        photo.save(self.tmp / "corner.png")
        img, _ = prepared_photo(self.tmp / "corner.png")
        garment = img[0, 0] > -1
        rows, columns = (garment.any(dim=d).nonzero().view(-1) for d in (1, 0))
        self.assertEqual((rows[0].item(), rows[-1].item()), (0, 27))       # 28 pixels high
        self.assertEqual((columns[0].item(), 27 - columns[-1].item()), (7, 7))   # 14 wide, centred

    def test_any_picture_gives_an_image_or_one_sentence(self):
        pictures = picture_battery()
        self.assertGreaterEqual(len(pictures), 50)
        for n, (name, data) in enumerate(pictures):
            with self.subTest(name):
                path = self.tmp / f"picture{n}"
                path.write_bytes(data)
                kind, value, detail = self.prepare(path)
                if kind == "image":
                    self.assertEqual(value.shape, (1, 1, 28, 28))
                    self.assertGreaterEqual(value.min().item(), -1.0)
                    self.assertLessEqual(value.max().item(), 1.0)
                else:
                    self.assertEqual((value, detail.count("\n")), (2, 1), detail)

    def test_an_empty_picture_is_classified_as_black_with_a_note(self):
        for fill in ("white", "black"):
            Image.new("RGB", (50, 40), fill).save(self.tmp / "empty.png")
            kind, img, note = self.prepare(self.tmp / "empty.png")
            self.assertEqual(kind, "image")
            self.assertTrue(torch.equal(img, torch.full((1, 1, 28, 28), -1.0)))
            self.assertIn("seemed empty", note)

    def test_a_picture_over_pils_pixel_limit_is_refused_with_its_size(self):
        Image.new("L", (300, 200), "white").save(self.tmp / "huge.png")
        # PIL refuses, from the size alone, a picture of more than twice MAX_IMAGE_PIXELS
        with mock.patch.object(Image, "MAX_IMAGE_PIXELS", 25000):
            kind, status, err = self.prepare(self.tmp / "huge.png")
        self.assertEqual((kind, status), ("refused", 2))
        self.assertIn("huge.png is too large to decode safely (Image size (60000 pixels)", err)
        self.assertIn("scale it down", err)

    def test_bad_images_each_get_one_sentence(self):
        self.use_trained_dropout()
        (self.tmp / "notes.png").write_text("not an image")
        png = io.BytesIO()
        Image.new("RGB", (30, 30), "white").save(png, format="PNG")
        (self.tmp / "half.png").write_bytes(png.getvalue()[:60])
        cases = {"missing.png": "no image file", "notes.png": "not an image",
                 "half.png": "cannot be decoded"}
        for name, phrase in cases.items():
            with self.subTest(name):
                self.assert_refused(inference, ["--image", self.tmp / name], phrase)
