"""The hostile-input corpus, generated in the test (no files): every case names the request and
the answer the README documents for it.

Images that are odd but valid (1xN, 16-bit, CMYK, palette with transparency, animated GIF, huge
EXIF) must be answered 200; broken or hostile ones get their 4xx and error code.
"""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

__all__ = ["AMPLIFICATION", "CORPUS", "Case", "png_bomb"]


@dataclass(frozen=True)
class Case:
    name: str
    path: str
    body: bytes
    content_type: str | None
    status: int
    code: str | None = None  # the JSON error code; None for 200
    headers: dict[str, str | bytes] = field(default_factory=dict)
    group: str = "input"


def _encode(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _rgb(h: int, w: int, seed: int = 0) -> Image.Image:
    arr = np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)
    return Image.fromarray(arr)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(width: int = 20_000, height: int = 20_000) -> bytes:
    """A valid 1-bit PNG of ``width`` x ``height`` zeros: ~50 KB that decodes to 400 Mpixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    comp = zlib.compressobj(9)
    row = b"\x00" * (1 + (width + 7) // 8)
    idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    return (
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")
    )


def _png_header_only(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"")
    return (
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")
    )


def _png16() -> bytes:
    arr = (np.arange(48 * 64, dtype=np.uint16).reshape(48, 64) * 20).astype(np.uint16)
    return _encode(Image.fromarray(arr), "PNG")  # uint16 -> mode I;16


def _cmyk_jpeg() -> bytes:
    return _encode(_rgb(40, 56).convert("CMYK"), "JPEG", quality=90)


def _palette_transparent() -> bytes:
    img = _rgb(40, 40, 3).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    return _encode(img, "PNG", transparency=0)


def _animated_gif() -> bytes:
    frames = [_rgb(32, 32, i).convert("P") for i in range(5)]
    return _encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)


def _huge_exif_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate
    exif[0x010E] = "x" * 60_000  # ImageDescription: nearly a whole APP1 segment
    return _encode(_rgb(30, 50), "JPEG", exif=exif.tobytes())


def _bad_exif_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 77  # an orientation that does not exist
    return _encode(_rgb(30, 50), "JPEG", exif=exif.tobytes())


def _huge_text_png() -> bytes:
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("comment", "y" * 3_000_000, zip=True)  # a zTXt bomb: tiny, inflates to 3 MB
    return _encode(_rgb(20, 20), "PNG", pnginfo=info)


def _multipart(n: int, payload: bytes, boundary: str = "b0undary") -> bytes:
    part = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()
    return b"".join(part + payload + b"\r\n" for _ in range(n)) + f"--{boundary}--\r\n".encode()


def _oip(doc: object) -> bytes:
    return json.dumps(doc).encode()


def _solid_png(h: int, w: int) -> bytes:
    """A valid grey PNG of h x w pixels: a few hundred KB that decodes to h*w*3 bytes."""
    return _encode(Image.new("RGB", (w, h), (90, 140, 200)), "PNG", compress_level=9)


SEGMENT_FORMATS = ("", "?format=rle", "?format=png", "?format=overlay")


def _amplification() -> list[Case]:
    """Requests whose cost could be out of all proportion to their size: extreme aspect ratios
    on every task and output format (the classifier used to resize a 16000x1 image to
    256 x 4 096 000), the largest image the pixel limit admits, OIP shapes with 200 000
    dimensions or integers of 5000 digits, and Unicode digits in numeric headers."""
    tensor = {"name": "IMAGE", "datatype": "BYTES", "data": [base64.b64encode(b"x").decode()]}
    infer = "/v2/models/cls/infer"
    cases = []
    for h, w in ((1, 16_000), (16_000, 1), (2, 16_384)):
        img = _encode(_rgb(h, w), "PNG")
        routes = ["/classify", "/detect", *(f"/segment{f}" for f in SEGMENT_FORMATS)]
        cases += [Case(f"{h}x{w} {r}", r, img, "image/png", 200) for r in routes]
    multi = _multipart(2, _encode(_rgb(1, 16_000), "PNG"))
    mp = "multipart/form-data; boundary=b0undary"
    cases += [  # two extreme images at once: the JSON answer with base64 PNGs
        Case(f"2 x 1x16000 /segment{f}", f"/segment{f}", multi, mp, 200)
        for f in ("?format=overlay", "?format=png")
    ]
    big = _solid_png(2000, 3000)  # 6 Mpixel (a phone photo): served in full
    cases += [
        Case(f"2000x3000 {r}", r, big, "image/png", 200)
        for r in ("/classify", "/detect", "/segment", "/segment?format=overlay")
    ]
    oip = [
        ("shape of 200000 dimensions", {"shape": [1] * 200_000}, 400),
        ("shape of 9 dimensions", {"shape": [1] * 9}, 400),
        ("shape of 17 elements", {"shape": [17]}, 413),
        ("shape [10^30]", {"shape": [10**30]}, 413),
        ("shape [2^62, 2^62, 0]", {"shape": [2**62, 2**62, 0]}, 413),
    ]
    cases += [
        Case(
            f"OIP: {label}", infer, _oip({"inputs": [{**tensor, **extra}]}), "application/json", st
        )
        for label, extra, st in oip
    ]
    digits = b'{"inputs": [{"name": "IMAGE", "datatype": "BYTES", "shape": [' + b"9" * 5000
    cases.append(
        Case("OIP: a 5000-digit integer", infer, digits + b"]}]}", "application/json", 400)
    )
    # latin-1 digits pass str.isdigit() but not int(): '\xb2' is superscript two
    for label, value in (("superscript two", b"\xb2"), ("superscripts one two", b"\xb9\xb2")):
        cases.append(
            Case(
                f"OIP: Inference-Header-Content-Length in {label}",
                infer,
                b"{}",
                "application/octet-stream",
                400,
                "bad_request",
                {"Inference-Header-Content-Length": value},
            )
        )
    return [Case(**{**vars(c), "group": "amplification"}) for c in cases]


def _build() -> list[Case]:
    ok_png = _encode(_rgb(48, 64), "PNG")
    jpeg = _encode(_rgb(48, 64, 1), "JPEG", quality=90)
    rng = np.random.default_rng(7)
    random_bytes = bytes(rng.integers(0, 256, 4096, dtype=np.uint8))
    mp = "multipart/form-data; boundary=b0undary"
    b64 = base64.b64encode(ok_png).decode()
    tensor = {"name": "IMAGE", "shape": [1], "datatype": "BYTES", "data": [b64]}
    infer = "/v2/models/cls/infer"
    bad, big = "undecodable_image", "image_too_large"
    cases = [
        # bodies and media types
        Case("empty raw body", "/classify", b"", "image/png", 400, bad),
        Case("random bytes", "/classify", random_bytes, "image/png", 400, bad),
        Case("truncated JPEG", "/classify", jpeg[: len(jpeg) // 2], "image/jpeg", 400, bad),
        Case("truncated PNG", "/classify", ok_png[: len(ok_png) // 2], "image/png", 400, bad),
        Case("PNG header only", "/classify", ok_png[:33], "image/png", 400, bad),
        Case(
            "wrong content type", "/classify", ok_png, "text/plain", 415, "unsupported_media_type"
        ),
        Case(
            "JSON to a task route",
            "/classify",
            b"{}",
            "application/json",
            415,
            "unsupported_media_type",
        ),
        Case("no content type", "/classify", ok_png, None, 415, "unsupported_media_type"),
        Case(
            "SVG",
            "/classify",
            b"<svg xmlns='http://www.w3.org/2000/svg'/>",
            "image/svg+xml",
            400,
            bad,
        ),
        # sizes
        Case("20000x20000 PNG bomb", "/classify", png_bomb(), "image/png", 413, big),
        Case(
            "8000x8000 PNG bomb (pixel limit)",
            "/detect",
            png_bomb(8000, 8000),
            "image/png",
            413,
            big,
        ),
        Case("0x0 PNG", "/classify", _png_header_only(0, 0), "image/png", 400, bad),
        Case("0xN PNG", "/segment", _png_header_only(0, 7), "image/png", 400, bad),
        Case("1x1 PNG", "/classify", _encode(_rgb(1, 1), "PNG"), "image/png", 200),
        Case("1x1000 PNG", "/detect", _encode(_rgb(1, 1000), "PNG"), "image/png", 200),
        Case("1000x1 PNG", "/segment", _encode(_rgb(1000, 1), "PNG"), "image/png", 200),
        Case(
            "1x3000 PNG segment png",
            "/segment?format=png",
            _encode(_rgb(1, 3000), "PNG"),
            "image/png",
            200,
        ),
        # modes and containers
        Case("16-bit grayscale PNG", "/classify", _png16(), "image/png", 200),
        Case("CMYK JPEG", "/detect", _cmyk_jpeg(), "image/jpeg", 200),
        Case("palette PNG with transparency", "/segment", _palette_transparent(), "image/png", 200),
        Case("animated GIF", "/classify", _animated_gif(), "image/gif", 200),
        Case("huge EXIF JPEG", "/detect", _huge_exif_jpeg(), "image/jpeg", 200),
        Case("invalid EXIF orientation", "/classify", _bad_exif_jpeg(), "image/jpeg", 200),
        Case("zTXt bomb PNG", "/classify", _huge_text_png(), "image/png", 400, bad),
        # multipart
        Case(
            "multipart with 1000 parts",
            "/classify",
            _multipart(1000, b"x"),
            mp,
            413,
            "payload_too_large",
        ),
        Case(
            "multipart with 1000 text fields",
            "/classify",
            b"".join(
                b'--b0undary\r\nContent-Disposition: form-data; name="f%d"\r\n\r\nv\r\n' % i
                for i in range(1000)
            )
            + b"--b0undary--\r\n",
            mp,
            400,
            "bad_request",
        ),
        Case(
            "multipart, 17 images",
            "/classify",
            _multipart(17, ok_png),
            mp,
            413,
            "payload_too_large",
        ),
        Case(
            "multipart without a closing boundary",
            "/classify",
            _multipart(1, ok_png)[:-14],
            mp,
            400,
            None,
        ),
        Case(
            "multipart without a boundary",
            "/classify",
            _multipart(1, ok_png),
            "multipart/form-data",
            400,
            None,
        ),
        Case(
            "multipart with no file part",
            "/classify",
            b'--b0undary\r\nContent-Disposition: form-data; name="a"\r\n\r\nb\r\n--b0undary--\r\n',
            mp,
            400,
            "bad_request",
        ),
        # limits on the body
        Case(
            "oversized body",
            "/classify",
            b"\x00" * (5 * 1024 * 1024),
            "image/png",
            413,
            "payload_too_large",
        ),
        # OIP v2 REST: malformed JSON and binary headers
        Case("OIP: not JSON", infer, b"\xff\xfe{", "application/json", 400, None),
        Case(
            "OIP: deeply nested JSON",
            infer,
            b"[" * 100_000 + b"]" * 100_000,
            "application/json",
            400,
            None,
        ),
        Case(
            "OIP: deeply nested data",
            infer,
            b'{"inputs": [{"name": "IMAGE", "shape": [1], "datatype": "BYTES", "data": '
            + b"[" * 50_000
            + b"]" * 50_000
            + b"}]}",
            "application/json",
            400,
            None,
        ),
        Case(
            "OIP: huge shape",
            infer,
            _oip({"inputs": [{**tensor, "shape": [10**12, 10**12]}]}),
            "application/json",
            413,
            "too_many_images",
        ),
        Case(
            "OIP: negative shape",
            infer,
            _oip({"inputs": [{**tensor, "shape": [-1]}]}),
            "application/json",
            400,
            None,
        ),
        Case(
            "OIP: shape as string",
            infer,
            _oip({"inputs": [{**tensor, "shape": "1"}]}),
            "application/json",
            400,
            None,
        ),
        Case(
            "OIP: float shape",
            infer,
            _oip({"inputs": [{**tensor, "shape": [1.5]}]}),
            "application/json",
            400,
            None,
        ),
        Case(
            "OIP: parameters not an object",
            infer,
            _oip({"inputs": [tensor], "parameters": [1, 2]}),
            "application/json",
            400,
            None,
        ),
        Case(
            "OIP: top_k infinite",
            infer,
            b'{"parameters": {"top_k": 1e999}, "inputs": [' + json.dumps(tensor).encode() + b"]}",
            "application/json",
            400,
            "bad_parameter",
        ),
        Case(
            "OIP: top_k as object",
            infer,
            _oip({"inputs": [tensor], "parameters": {"top_k": {"a": 1}}}),
            "application/json",
            400,
            None,
        ),
        Case(
            "OIP: header length beyond the body",
            infer,
            b"{}",
            "application/octet-stream",
            400,
            None,
            {"Inference-Header-Content-Length": "999999"},
        ),
        Case(
            "OIP: header length 0",
            infer,
            b"{}",
            "application/octet-stream",
            400,
            None,
            {"Inference-Header-Content-Length": "0"},
        ),
        Case(
            "OIP: header length negative",
            infer,
            b"{}",
            "application/octet-stream",
            400,
            None,
            {"Inference-Header-Content-Length": "-5"},
        ),
        Case(
            "OIP: header length 30 digits",
            infer,
            b"{}",
            "application/octet-stream",
            400,
            None,
            {"Inference-Header-Content-Length": "9" * 30},
        ),
        *[
            Case(
                f"OIP: binary {label}",
                infer,
                head + raw,
                "application/octet-stream",
                400,
                None,
                {"Inference-Header-Content-Length": str(len(head))},
            )
            for label, head, raw in _binary_cases(ok_png)
        ],
        # routing and query values
        Case("unknown model", "/classify?model=nope", ok_png, "image/png", 404, "model_not_found"),
        Case(
            "unknown model (OIP)",
            "/v2/models/nope/infer",
            _oip({"inputs": [tensor]}),
            "application/json",
            404,
            None,
        ),
        Case(
            "model name too long",
            "/classify?model=" + "m" * 300,
            ok_png,
            "image/png",
            400,
            "bad_parameter",
        ),
        Case("model of another task", "/detect?model=cls", ok_png, "image/png", 400, "bad_request"),
        *[
            Case(f"query {q}", f"/{task}?{q}", ok_png, "image/png", 400, "bad_parameter")
            for task, q in [
                ("classify", "top_k=0"),
                ("classify", "top_k=-3"),
                ("classify", "top_k=1e3"),
                ("classify", "top_k=99999999999999999999999"),
                ("detect", "score_threshold=nan"),
                ("detect", "score_threshold=inf"),
                ("detect", "score_threshold=-0.1"),
                ("segment", "format=jpeg"),
                ("classify", "format=png"),
            ]
        ],
        Case(
            "deadline header junk",
            "/classify",
            ok_png,
            "image/png",
            400,
            "bad_request",
            {"X-Request-Timeout": "soon"},
        ),
        Case(
            "deadline header negative",
            "/classify",
            ok_png,
            "image/png",
            400,
            "bad_request",
            {"X-Request-Timeout": "-1"},
        ),
        Case(
            "deadline header nan",
            "/classify",
            ok_png,
            "image/png",
            400,
            "bad_request",
            {"X-Request-Timeout": "nan"},
        ),
    ]
    return cases


def _binary_cases(image: bytes) -> list[tuple[str, bytes, bytes]]:
    def head(size: object, shape: list[int] | None = None) -> bytes:
        t = {
            "name": "IMAGE",
            "shape": shape or [1],
            "datatype": "BYTES",
            "parameters": {"binary_data_size": size},
        }
        return json.dumps({"inputs": [t]}).encode()

    good = struct.pack("<I", len(image)) + image
    return [
        ("size beyond the data", head(len(good) + 10), good),
        ("size negative", head(-1), good),
        ("size a string", head("12"), good),
        ("element length beyond the data", head(8), struct.pack("<I", 2**32 - 1) + b"abcd"),
        ("truncated length prefix", head(2), b"\x01\x00"),
        ("element count does not match the shape", head(len(good), [3]), good),
    ]


AMPLIFICATION = _amplification()
CORPUS = _build() + AMPLIFICATION
