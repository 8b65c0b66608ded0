"""A hostile-input corpus and a seeded fuzzer, generated in code (no binary blobs in the repo).

Every case is bytes plus what the library must make of them: decode to a known shape, or refuse
with a typed error (``InvalidImageError`` or one of its subclasses). Nothing else is acceptable:
no other exception, no hang, no multi-GB allocation.

Used by the tests of ``load_image``, ``s3od serve`` and ``s3od remove``; run it as a script to
write the corpus to a folder for manual tries::

    python tests/hostile_corpus.py /tmp/hostile
"""

from __future__ import annotations

import functools
import io
import os
import random
import struct
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, features

from s3od.imageio import ACCEPTED_FORMATS

#: What a case must produce. ``typed`` = decode or refuse with InvalidImageError, either is fine
#: (malformed metadata that a future Pillow may tolerate or refuse).
OK, INVALID, UNSUPPORTED, TOO_LARGE, TYPED = "ok", "invalid", "unsupported", "too_large", "typed"

#: Side of the header-only giants and bombs: 900 MP, past any sane limit and Pillow's own.
GIANT = 30_000

SUFFIX = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "BMP": "bmp", "TIFF": "tif", "GIF": "gif",
          "AVIF": "avif", "MPO": "jpg"}


@dataclass(frozen=True)
class Case:
    name: str
    data: bytes
    expect: str
    #: (height, width) of the decoded image when expect is OK
    shape: tuple[int, int] | None = None
    suffix: str = "bin"


def photo(width: int = 48, height: int = 32, seed: int = 0) -> Image.Image:
    """A small RGB image with gradients and noise, so every encoder has real work."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x * 255 // max(1, width - 1), y * 255 // max(1, height - 1),
                    (x + y) % 256], axis=-1).astype(np.int16)
    rgb += rng.integers(-20, 20, rgb.shape, dtype=np.int16)
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB")


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return (struct.pack(">I", len(payload)) + kind + payload
            + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF))


def png_raw(width: int, height: int, bit_depth: int, color_type: int, rows: bytes | None,
            extra: bytes = b"") -> bytes:
    """A PNG from parts; ``rows=None`` leaves the IDAT out (a header-only file)."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    body = png_chunk(b"IHDR", ihdr) + extra
    if rows is not None:
        body += png_chunk(b"IDAT", zlib.compress(rows, 9))
    return b"\x89PNG\r\n\x1a\n" + body + png_chunk(b"IEND", b"")


def png_bomb(side: int = GIANT) -> bytes:
    """A valid 1-bit PNG of ``side``² pixels, ~110 kB on disk, 2.5 GiB as RGB."""
    row = b"\x00" * (1 + (side + 7) // 8)
    packer = zlib.compressobj(9)
    data = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", data)
            + png_chunk(b"IEND", b""))


def tiff_bomb(side: int = GIANT) -> bytes:
    """A valid deflate-compressed 1-bit TIFF of ``side``² pixels in one strip (~110 kB)."""
    packer = zlib.compressobj(9)
    row = b"\x00" * ((side + 7) // 8)
    strip = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    entries = [  # tag, type (3 short, 4 long), value
        (256, 4, side), (257, 4, side), (258, 3, 1), (259, 3, 8), (262, 3, 1),
        (273, 4, 0), (277, 3, 1), (278, 4, side), (279, 4, len(strip)),
    ]
    ifd_offset = 8
    data_offset = ifd_offset + 2 + 12 * len(entries) + 4
    out = b"II*\x00" + struct.pack("<I", ifd_offset) + struct.pack("<H", len(entries))
    for tag, kind, value in entries:
        value = data_offset if tag == 273 else value
        packed = struct.pack("<HI", value, 0)[:4] if kind == 3 else struct.pack("<I", value)
        out += struct.pack("<HHI", tag, kind, 1) + packed
    return out + struct.pack("<I", 0) + strip


def tiff_header_only(width: int, height: int, next_ifd_self: bool = False) -> bytes:
    """A TIFF whose one IFD declares a size and points at strips that are not there."""
    entries = [(256, 4, width), (257, 4, height), (258, 3, 8), (259, 3, 1), (262, 3, 1),
               (273, 4, 10_000), (277, 3, 1), (278, 4, height), (279, 4, width * height)]
    out = b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", len(entries))
    for tag, kind, value in entries:
        packed = struct.pack("<HI", value, 0)[:4] if kind == 3 else struct.pack("<I", value)
        out += struct.pack("<HHI", tag, kind, 1) + packed
    return out + struct.pack("<I", 8 if next_ifd_self else 0)


def jpeg_header_only(width: int, height: int) -> bytes:
    """SOI, a baseline SOF0 declaring ``width``x``height``, a scan header and no scan data."""
    sof = struct.pack(">BHHB", 8, height, width, 3) + b"".join(
        struct.pack(">BBB", i + 1, 0x11, 0) for i in range(3))
    sos = struct.pack(">B", 3) + b"".join(struct.pack(">BB", i + 1, 0) for i in range(3)) + bytes(
        (0, 63, 0))
    return (b"\xff\xd8" + b"\xff\xc0" + struct.pack(">H", len(sof) + 2) + sof
            + b"\xff\xda" + struct.pack(">H", len(sos) + 2) + sos)


def gif_header_only(width: int, height: int) -> bytes:
    return (b"GIF89a" + struct.pack("<HHBBB", width, height, 0, 0, 0)
            + b"\x2c" + struct.pack("<HHHHB", 0, 0, width, height, 0) + b"\x08")


def bmp_header_only(width: int, height: int) -> bytes:
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + len(info), 0, 0, 14 + len(info)) + info


def webp_giant_canvas(width: int, height: int) -> bytes:
    """An animated WebP of two 8x8 frames on a canvas of ``width``x``height`` (a few 100 bytes)."""
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255))]
    data = bytearray(encode(frames[0], "WEBP", save_all=True, append_images=frames[1:]))
    assert data[12:16] == b"VP8X"
    data[24:27] = (width - 1).to_bytes(3, "little")
    data[27:30] = (height - 1).to_bytes(3, "little")
    return bytes(data)


def jpeg_with_app1(payload: bytes, base: bytes) -> bytes:
    """Insert an APP1 segment holding ``payload`` right after SOI."""
    return base[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + base[2:]


def exif_bytes(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


# ------------------------------------------------------------------- refused formats


def _refused_writable() -> list[Case]:
    """Every format Pillow can both write and read, except the accepted ones."""
    Image.init()
    cases = []
    for fmt in sorted(set(Image.SAVE) & set(Image.OPEN)):
        if fmt in ACCEPTED_FORMATS:
            continue
        for mode, size in (("RGB", (16, 16)), ("L", (16, 16)), ("1", (16, 16)), ("P", (16, 16))):
            try:
                data = encode(Image.new(mode, size, 1), fmt)
                if Image.open(io.BytesIO(data)).format != fmt:
                    continue
            except Exception:  # this mode or an optional codec is missing for the format
                continue
            cases.append(Case(f"format-{fmt.lower()}", data, UNSUPPORTED))
            break
    return cases


def _refused_read_only() -> list[Case]:
    """Formats Pillow reads but cannot write, built by hand."""
    xpm = (b'/* XPM */\nstatic char *x[] = {\n"4 2 1 1",\n"a c #ff0000",\n"aaaa",\n"aaaa"\n};\n')
    cards = [b"SIMPLE  =                    T", b"BITPIX  =                    8",
             b"NAXIS   =                    2", b"NAXIS1  =                    4",
             b"NAXIS2  =                    4", b"END"]
    fits = b"".join(c.ljust(80) for c in cards).ljust(2880) + bytes(16).ljust(2880, b"\0")
    sun = struct.pack(">8I", 0x59A66A95, 4, 4, 8, 16, 1, 0, 0) + bytes(16)
    psd = (b"8BPS" + struct.pack(">H6xHIIHH", 1, 3, 4, 4, 8, 3)
           + struct.pack(">III", 0, 0, 0) + struct.pack(">H", 0) + bytes(48))
    name = b"brush\x00"
    gbr = struct.pack(">IIIII", 28 + len(name), 2, 4, 4, 1) + b"GIMP" + struct.pack(
        ">I", 25) + name + bytes(16)
    return [Case("format-xpm", xpm, UNSUPPORTED), Case("format-fits", fits, UNSUPPORTED),
            Case("format-sun", sun, UNSUPPORTED), Case("format-psd", psd, UNSUPPORTED),
            Case("format-gbr", gbr, UNSUPPORTED),
            Case("format-pdf", encode(photo(), "PDF"), INVALID)]


# ------------------------------------------------------------------- the corpus


def _accepted_seeds() -> dict[str, bytes]:
    """One small valid image per accepted format this Pillow can write."""
    img = photo()
    seeds = {"JPEG": encode(img, "JPEG", quality=90), "PNG": encode(img, "PNG"),
             "WEBP": encode(img, "WEBP", quality=80), "BMP": encode(img, "BMP"),
             "TIFF": encode(img, "TIFF", compression="tiff_deflate"),
             "GIF": encode(img.convert("P"), "GIF")}
    if features.check("avif"):
        seeds["AVIF"] = encode(img, "AVIF", quality=60)
    return seeds


@functools.cache
def corpus() -> tuple[Case, ...]:
    img = photo()
    h, w = img.height, img.width
    seeds = _accepted_seeds()
    cases: list[Case] = []
    add = cases.append

    # nothing, text, and other files that are not images
    add(Case("empty", b"", INVALID))
    add(Case("text", b"hello, this is not an image\n" * 4, INVALID, suffix="txt"))
    add(Case("html", b"<!doctype html><html><body><img src=x></body></html>", INVALID))
    add(Case("svg", b'<svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"/>', INVALID))
    add(Case("json", b'{"image": "cat.jpg"}', INVALID))
    add(Case("zip", b"PK\x03\x04" + bytes(60), INVALID))
    add(Case("zeros", bytes(4096), INVALID))
    add(Case("one-byte", b"\xff", INVALID))

    # every accepted format: valid, truncated at several points, magic only
    for fmt, data in seeds.items():
        sfx = SUFFIX[fmt]
        add(Case(f"valid-{fmt.lower()}", data, OK, (h, w), sfx))
        for frac in (0.05, 0.5, 0.9):
            cut = data[:max(8, int(len(data) * frac))]
            add(Case(f"truncated-{int(frac * 100)}-{fmt.lower()}", cut, INVALID, suffix=sfx))
        add(Case(f"magic-only-{fmt.lower()}", data[:12], INVALID, suffix=sfx))

    # formats Pillow knows but s3od refuses
    cases += _refused_writable()
    cases += _refused_read_only()

    # malformed metadata: EXIF, ICC, XMP in JPEG, PNG and WebP
    garbage = b"this is not a TIFF block \x00\xff" * 3
    broken_ifd = b"MM\x00*\x00\x00\x00\x08" + b"\xff\xff" + bytes(8)  # 65535 entries, none there
    for fmt in ("JPEG", "PNG", "WEBP"):
        sfx = SUFFIX[fmt]
        for label, exif in (("garbage", garbage), ("exif-prefix-garbage", b"Exif\x00\x00" +
                                                   garbage), ("broken-ifd", broken_ifd)):
            add(Case(f"exif-{label}-{fmt.lower()}", encode(img, fmt, exif=exif), TYPED,
                     suffix=sfx))
        add(Case(f"exif-orientation-99-{fmt.lower()}", encode(img, fmt, exif=exif_bytes(99)),
                 OK, (h, w), sfx))
        add(Case(f"exif-rotate-90-{fmt.lower()}", encode(img, fmt, exif=exif_bytes(6)), OK,
                 (w, h), sfx))
        add(Case(f"icc-garbage-{fmt.lower()}", encode(img, fmt, icc_profile=garbage), TYPED,
                 suffix=sfx))
        xmp = b"<x:xmpmeta><rdf:RDF><unclosed tiff:Orientation='6'" + garbage
        add(Case(f"xmp-garbage-{fmt.lower()}", encode(img, fmt, xmp=xmp), TYPED, suffix=sfx))
    jpeg = seeds["JPEG"]
    add(Case("jpeg-app1-empty-exif", jpeg_with_app1(b"Exif\x00\x00", jpeg), TYPED, suffix="jpg"))
    add(Case("jpeg-app1-xmp-garbage", jpeg_with_app1(
        b"http://ns.adobe.com/xap/1.0/\x00<x:xmpmeta" + garbage, jpeg), TYPED, suffix="jpg"))
    rows = b"".join(b"\x00" + bytes(3 * w) for _ in range(h))
    add(Case("png-iccp-not-zlib", png_raw(w, h, 8, 2, rows, png_chunk(
        b"iCCP", b"icc\x00\x00" + garbage)), TYPED, suffix="png"))
    add(Case("png-bad-crc", encode(img, "PNG")[:29] + b"\x00\x00\x00\x00" + encode(
        img, "PNG")[33:], INVALID, suffix="png"))
    add(Case("png-idat-not-zlib", png_raw(w, h, 8, 2, None, png_chunk(b"IDAT", garbage)),
             INVALID, suffix="png"))

    # header-only giants and decompression bombs (small on disk, 2.5 GiB decoded)
    add(Case("giant-header-png", png_raw(GIANT, GIANT, 8, 2, None), TOO_LARGE, suffix="png"))
    add(Case("giant-header-jpeg", jpeg_header_only(GIANT, GIANT), TOO_LARGE, suffix="jpg"))
    add(Case("giant-header-gif", gif_header_only(65535, 65535), TOO_LARGE, suffix="gif"))
    add(Case("giant-header-bmp", bmp_header_only(GIANT, GIANT), TOO_LARGE, suffix="bmp"))
    add(Case("giant-header-tiff", tiff_header_only(GIANT, GIANT), TOO_LARGE, suffix="tif"))
    add(Case("giant-canvas-webp", webp_giant_canvas(16383, 16383), TOO_LARGE, suffix="webp"))
    add(Case("bomb-png", png_bomb(), TOO_LARGE, suffix="png"))
    add(Case("bomb-tiff", tiff_bomb(), TOO_LARGE, suffix="tif"))
    add(Case("small-header-no-data-tiff", tiff_header_only(64, 64), INVALID, suffix="tif"))
    add(Case("tiff-ifd-loop", tiff_header_only(64, 64, next_ifd_self=True), INVALID,
             suffix="tif"))
    add(Case("zero-width-png", png_raw(0, 16, 8, 2, b""), INVALID, suffix="png"))

    # extreme shapes
    for width, height in ((1, 1), (1, 4000), (4000, 1)):
        tall = photo(width, height)
        for fmt in ("PNG", "JPEG", "WEBP"):
            add(Case(f"shape-{width}x{height}-{fmt.lower()}", encode(tall, fmt), OK,
                     (height, width), SUFFIX[fmt]))

    # animations: the first frame is the image
    frames = [Image.new("RGB", (w, h), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    for fmt in ("GIF", "PNG", "WEBP"):
        data = encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=40)
        add(Case(f"animated-{fmt.lower()}", data, OK, (h, w), SUFFIX[fmt]))

    # colour models and bit depths
    add(Case("cmyk-jpeg", encode(img.convert("CMYK"), "JPEG"), OK, (h, w), "jpg"))
    add(Case("cmyk-tiff", encode(img.convert("CMYK"), "TIFF"), OK, (h, w), "tif"))
    grey16 = Image.fromarray((np.arange(w * h, dtype=np.uint16) * 37).reshape(h, w))
    add(Case("grey-16bit-png", encode(grey16, "PNG"), OK, (h, w), "png"))
    add(Case("grey-16bit-tiff", encode(grey16, "TIFF"), OK, (h, w), "tif"))
    rgb16 = b"".join(b"\x00" + bytes(range(256))[: 6 * w].ljust(6 * w, b"\x7f") for _ in range(h))
    add(Case("rgb-16bit-png", png_raw(w, h, 16, 2, rgb16), OK, (h, w), "png"))
    add(Case("float-tiff", encode(Image.fromarray(np.linspace(0, 1, w * h, dtype=np.float32)
                                                  .reshape(h, w)), "TIFF"), OK, (h, w), "tif"))
    add(Case("int32-tiff", encode(Image.fromarray(np.arange(w * h, dtype=np.int32)
                                                  .reshape(h, w)), "TIFF"), OK, (h, w), "tif"))
    palette = img.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    add(Case("palette-png", encode(palette, "PNG"), OK, (h, w), "png"))
    add(Case("palette-transparency-png", encode(palette, "PNG", transparency=3), OK, (h, w),
             "png"))
    add(Case("palette-bmp", encode(palette, "BMP"), OK, (h, w), "bmp"))
    add(Case("bilevel-png", encode(img.convert("1"), "PNG"), OK, (h, w), "png"))
    add(Case("grey-alpha-png", encode(img.convert("LA"), "PNG"), OK, (h, w), "png"))
    add(Case("rgba-webp", encode(img.convert("RGBA"), "WEBP", lossless=True), OK, (h, w), "webp"))
    add(Case("lab-tiff", encode(img.convert("LAB"), "TIFF"), OK, (h, w), "tif"))
    add(Case("mpo", encode(img, "MPO", save_all=True, append_images=[img]), OK, (h, w), "jpg"))
    return tuple(cases)


# ------------------------------------------------------------------- fuzzing


def _mutate(data: bytes, rng: random.Random) -> bytes:
    buf = bytearray(data)
    kind = rng.randrange(7)
    if kind == 0:  # flip a few bits
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(len(buf))
            buf[i] ^= 1 << rng.randrange(8)
    elif kind == 1:  # random bytes in the first 64 (headers live there)
        for _ in range(rng.randint(1, 4)):
            buf[rng.randrange(min(64, len(buf)))] = rng.randrange(256)
    elif kind == 2:  # truncate
        del buf[rng.randrange(1, len(buf)):]
    elif kind == 3:  # insert junk
        i = rng.randrange(len(buf))
        buf[i:i] = rng.randbytes(rng.randint(1, 64))
    elif kind == 4:  # duplicate a slice
        i = rng.randrange(len(buf))
        j = min(len(buf), i + rng.randint(1, 256))
        buf[j:j] = buf[i:j]
    elif kind == 5:  # a 32-bit field to an extreme (sizes, offsets, counts)
        i = rng.randrange(max(1, min(128, len(buf)) - 4))
        buf[i:i + 4] = rng.choice([b"\xff\xff\xff\xff", b"\x00\x00\x00\x00", b"\x7f\xff\xff\xff",
                                   b"\x00\x01\x00\x00"])
    else:  # zero a region
        i = rng.randrange(len(buf))
        buf[i:i + rng.randint(1, 512)] = bytes(len(buf[i:i + rng.randint(1, 512)]))
    return bytes(buf)


def fuzz_cases(count: int, seed: int = 14) -> list[tuple[str, bytes]]:
    """``count`` mutated images (name, bytes), the same for the same seed and Pillow."""
    rng = random.Random(seed)
    seeds = _accepted_seeds()
    img = photo(40, 24, seed=1)
    seeds["JPEG-EXIF"] = encode(img, "JPEG", exif=exif_bytes(6))
    seeds["PNG-EXIF"] = encode(img, "PNG", exif=exif_bytes(6))
    seeds["WEBP-EXIF"] = encode(img, "WEBP", exif=exif_bytes(3))
    seeds["PNG-PALETTE"] = encode(img.convert("P"), "PNG", transparency=0)
    seeds["GIF-ANIMATED"] = encode(img.convert("P"), "GIF", save_all=True,
                                   append_images=[photo(40, 24, seed=2).convert("P")])
    names = sorted(seeds)
    out = []
    for i in range(count):
        name = names[i % len(names)]
        data = seeds[name]
        for _ in range(rng.choice((1, 1, 2, 3))):
            data = _mutate(data, rng) or b"\x00"
        out.append((f"fuzz-{i:03d}-{name.lower()}", data))
    return out


# ------------------------------------------------------------------- data-pipeline samples


@dataclass(frozen=True)
class SampleCase:
    """One sample of the generation layout (``<class>/images|masks|metadata``) and its fate.

    ``valid``: filter and export must take it (decodes, sizes agree, metadata fine); otherwise
    they must report it as failed, per sample. ``agrees``: whether ``teacher_agreement`` at 0.5
    lets it through (only meaningful when valid).
    """

    stem: bytes
    image: bytes
    suffix: str
    mask: bytes
    metadata: bytes | None
    valid: bool
    agrees: bool = True
    #: False: either fate is right (malformed metadata a decoder may tolerate, fuzzed bytes);
    #: a test then asks only that the sample is exported intact or reported
    known: bool = True


def _mask(height: int, width: int) -> bytes:
    mask = np.zeros((height, width), np.uint8)
    mask[height // 4: 3 * height // 4, width // 4: 3 * width // 4] = 255
    return encode(Image.fromarray(mask, "L"), "PNG")


def sample_cases(fuzz: int = 0) -> list[SampleCase]:
    """Broken and odd samples for ``filter`` and ``export`` (plus ``fuzz`` mutated images,
    whose fate is "valid or reported", see :func:`fuzz_samples`)."""
    img = photo()
    h, w = img.height, img.width
    good_meta = b'{"caption": "a photo", "agreement": 0.97}'
    mask = _mask(h, w)
    jpeg = encode(img, "JPEG", quality=90)
    cases = [
        SampleCase(b"good-png", encode(img, "PNG"), "png", mask, good_meta, True),
        SampleCase(b"good-jpg", jpeg, "jpg", mask, good_meta, True),
        SampleCase(b"good-webp", encode(img, "WEBP", lossless=True), "webp", mask, good_meta,
                   True),
        SampleCase(b"good-bmp", encode(img, "BMP"), "bmp", mask, good_meta, True),
        SampleCase(b"no-metadata", jpeg, "jpg", mask, None, True, agrees=False),
        SampleCase(b"truncated-image", jpeg[: len(jpeg) // 2], "jpg", mask, good_meta, False),
        SampleCase(b"truncated-mask", jpeg, "jpg", mask[: len(mask) // 2], good_meta, False),
        SampleCase(b"empty-mask-file", jpeg, "jpg", b"", good_meta, False),
        SampleCase(b"mask-other-size", jpeg, "jpg", _mask(h + 1, w), good_meta, False),
        SampleCase(b"mask-transposed", jpeg, "jpg", _mask(w, h), good_meta, False),
        SampleCase(b"mask-is-text", jpeg, "jpg", b"not a png", good_meta, False),
        SampleCase(b"metadata-list", jpeg, "jpg", mask, b"[1, 2, 3]", False),
        SampleCase(b"metadata-string", jpeg, "jpg", mask, b'"caption"', False),
        SampleCase(b"metadata-not-utf8", jpeg, "jpg", mask, b'{"caption": "caf\xe9"}', False),
        SampleCase(b"metadata-not-json", jpeg, "jpg", mask, b"{caption: 1", False),
        SampleCase(b"metadata-empty", jpeg, "jpg", mask, b"", False),
        SampleCase(b"caption-list", jpeg, "jpg", mask, b'{"caption": ["a", "b"]}', False),
        SampleCase(b"category-number", jpeg, "jpg", mask, b'{"category": 7}', False),
        SampleCase(b"agreement-true", jpeg, "jpg", mask, b'{"agreement": true}', True,
                   agrees=False),
        SampleCase(b"agreement-text", jpeg, "jpg", mask, b'{"agreement": "0.99"}', True,
                   agrees=False),
        SampleCase(b"agreement-nan", jpeg, "jpg", mask, b'{"agreement": NaN}', True,
                   agrees=False),
        SampleCase(b"agreement-huge", jpeg, "jpg", mask, b'{"agreement": 1e300}', True,
                   agrees=False),
        SampleCase(b"agreement-list", jpeg, "jpg", mask, b'{"agreement": [1]}', True,
                   agrees=False),
        SampleCase(b"name-caf\xe9", jpeg, "jpg", mask, good_meta, False),
    ]
    # every corpus file as the image of a sample, under an accepted suffix
    for case in corpus():
        if case.expect == OK and case.shape is not None:
            cases.append(SampleCase(f"corpus-{case.name}".encode(), case.data, "png",
                                    _mask(*case.shape), good_meta, True))
        elif case.expect != OK:
            cases.append(SampleCase(f"corpus-{case.name}".encode(), case.data, "png", mask,
                                    good_meta, False, known=case.expect != TYPED))
    return cases


def write_samples(root: Path, cases: list[SampleCase], category: str = "hostile") -> Path:
    """Write ``cases`` as ``root/<category>/{images,masks,metadata}``; returns the class folder."""
    folder = root / category
    for sub in ("images", "masks", "metadata"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for case in cases:
        stem = case.stem
        (folder / "images").joinpath(os.fsdecode(stem + b"." + case.suffix.encode())
                                     ).write_bytes(case.image)
        (folder / "masks").joinpath(os.fsdecode(stem + b".png")).write_bytes(case.mask)
        if case.metadata is not None:
            (folder / "metadata").joinpath(os.fsdecode(stem + b".json")).write_bytes(
                case.metadata)
    return folder


def fuzz_samples(count: int, seed: int = 22) -> list[SampleCase]:
    """Mutated images and masks (see :func:`fuzz_cases`), of unknown fate (``known=False``)."""
    out = []
    mask = _mask(24, 40)
    rng = random.Random(seed)
    for i, (name, data) in enumerate(fuzz_cases(count, seed)):
        broken_mask = _mutate(mask, rng) if i % 3 == 0 else mask
        out.append(SampleCase(name.encode(), data, "png", broken_mask, None, False,
                              known=False))
    return out


def write_corpus(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for case in corpus():
        path = folder / f"{case.name}.{case.suffix}"
        path.write_bytes(case.data)
        paths.append(path)
    return paths


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python tests/hostile_corpus.py OUTPUT_FOLDER")
    written = write_corpus(Path(sys.argv[1]))
    print(f"wrote {len(written)} files to {sys.argv[1]}")


# --------------------------------------------------------------------------- videos (issue 22)

#: What a hostile video must give: frames written (OK), a typed refusal (INVALID, TOO_LARGE),
#: or either of those (TYPED: a damaged stream FFmpeg may partly decode).
VIDEO_MAX_PIXELS = 10_000_000


@dataclass(frozen=True)
class VideoCase:
    """One video file of the corpus and the outcome it must have."""

    name: str
    path: Path
    expect: str


def video_bytes(width: int, height: int, frames: int = 2, codec: str = "mjpeg",
                container: str = "matroska") -> bytes:
    """A small clip of flat grey frames, encoded in memory with PyAV."""
    import av

    pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=container) as out:
        stream = out.add_stream(codec, rate=4)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(
                np.full((height, width, 3), 50 + 60 * i, np.uint8), format="rgb24"
            ).reformat(format=pix_fmt)
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return buffer.getvalue()


def audio_only_bytes() -> bytes:
    """A Matroska file with one short audio stream and no video."""
    import av

    buffer = io.BytesIO()
    with av.open(buffer, "w", format="matroska") as out:
        stream = out.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16",
                                           layout="mono")
        frame.sample_rate = 8000
        out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return buffer.getvalue()


def video_corpus(folder: Path) -> list[VideoCase]:
    """Hostile and ordinary videos written to ``folder``: a frame over
    :data:`VIDEO_MAX_PIXELS` in a small file, empty, text, truncated and audio-only files."""
    folder.mkdir(parents=True, exist_ok=True)
    mkv = video_bytes(64, 48, frames=3)
    mp4 = video_bytes(64, 48, frames=3, codec="libx264", container="mp4")
    files = {
        "ok.mkv": (mkv, OK),
        "ok.mp4": (mp4, OK),
        "huge_frame.mkv": (video_bytes(4096, 4096, frames=1), TOO_LARGE),
        "empty.mp4": (b"", INVALID),
        "text.mp4": (b"this is not a video\n" * 10, INVALID),
        "png_named.mp4": (encode(photo(), "PNG"), TYPED),
        "mp4_cut_before_index.mp4": (mp4[: len(mp4) // 2], INVALID),
        "mkv_cut_midway.mkv": (mkv[: len(mkv) * 2 // 3], TYPED),
        "header_only.mkv": (mkv[:200], TYPED),
        "audio_only.mkv": (audio_only_bytes(), INVALID),
    }
    cases = []
    for name, (data, expect) in files.items():
        (folder / name).write_bytes(data)
        cases.append(VideoCase(name, folder / name, expect))
    return cases


def video_fuzz(folder: Path, count: int, seed: int = 22) -> list[Path]:
    """``count`` seeded mutations of a small valid clip (bit flips, cuts, repeated runs)."""
    rng = random.Random(seed)
    base = video_bytes(64, 48, frames=3)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"fuzz{i:03d}.mkv"
        path.write_bytes(_mutate(base, rng))
        paths.append(path)
    return paths
