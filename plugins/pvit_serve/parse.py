"""OpenAI chat requests -> Predictor samples: messages, image_url parts (data:/file: URLs), the ``regions`` field."""

from __future__ import annotations

import base64
import binascii
import io
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from pvit.predict_text import PredictError


@dataclass
class Limits:
    """What a request may hold; images from files and remote URLs only when enabled."""

    max_image_bytes: int = 10 * 1024 * 1024
    max_image_pixels: int = 4096 * 4096
    max_regions: int = 16
    allow_local_files: bool = False
    allow_remote_images: bool = False


def _open_image(data: bytes, limits: Limits, where: str):
    from PIL import Image

    if len(data) > limits.max_image_bytes:
        raise PredictError(f"{where}: the image is {len(data)} bytes; the limit is {limits.max_image_bytes}",
                           "image_too_large")
    try:
        img = Image.open(io.BytesIO(data))
        if img.width * img.height > limits.max_image_pixels:  # before decoding: a decompression bomb stops here
            raise PredictError(f"{where}: the image is {img.width}x{img.height} pixels; the limit is "
                               f"{limits.max_image_pixels} pixels", "image_too_large")
        img.load()
        return img.convert("RGB")
    except PredictError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise PredictError(f"{where}: rejected as a decompression bomb ({e})", "image_too_large") from None
    except Exception as e:  # noqa: BLE001 - any undecodable input is the client's
        raise PredictError(f"{where}: the image cannot be decoded ({type(e).__name__})", "invalid_image") from None


def load_image_url(url: str, limits: Limits, where: str):
    """A PIL image from a ``data:`` URL, a ``file:`` URL (with ``allow_local_files``) or http(s) (with
    ``allow_remote_images``)."""
    if not isinstance(url, str):
        raise PredictError(f"{where}: image_url.url must be a string", "invalid_image")
    if url.startswith("data:"):
        head, _, payload = url.partition(",")
        if ";base64" not in head:
            raise PredictError(f"{where}: only base64 data: URLs are accepted", "invalid_image")
        if len(payload) > limits.max_image_bytes * 4 // 3 + 4:
            raise PredictError(f"{where}: the image is over {limits.max_image_bytes} bytes", "image_too_large")
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise PredictError(f"{where}: the data: URL is not valid base64", "invalid_image") from None
        return _open_image(data, limits, where)
    scheme = urlparse(url).scheme
    if scheme == "file":
        if not limits.allow_local_files:
            raise PredictError(f"{where}: file: URLs are disabled (start the server with --allow-local-files)",
                               "invalid_image")
        path = Path(unquote(urlparse(url).path))
        if not path.is_file():
            raise PredictError(f"{where}: {path} is not a file", "invalid_image")
        if path.stat().st_size > limits.max_image_bytes:
            raise PredictError(f"{where}: the image is over {limits.max_image_bytes} bytes", "image_too_large")
        return _open_image(path.read_bytes(), limits, where)
    if scheme in ("http", "https"):
        if not limits.allow_remote_images:
            raise PredictError(f"{where}: remote image URLs are not fetched (start the server with "
                               "--allow-remote-images); send a base64 data: URL", "invalid_image")
        from urllib.request import urlopen

        try:
            with urlopen(url, timeout=10) as r:  # noqa: S310 - only with the explicit flag
                data = r.read(limits.max_image_bytes + 1)
        except OSError as e:
            raise PredictError(f"{where}: the image could not be fetched ({e})", "invalid_image") from None
        return _open_image(data, limits, where)
    raise PredictError(f"{where}: image URL scheme {scheme!r} is not supported; valid: data:, file:, http(s):",
                       "invalid_image")


def parse_messages(body: dict, limits: Limits) -> tuple[object, list[dict], list, str]:
    """``(image, turns, boxes, box_format)`` of a chat request; the ``regions`` field gives the boxes."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise PredictError("'messages' must be a non-empty list", "invalid_request")
    images, turns, system = [], [], []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("system", "developer", "user", "assistant"):
            raise PredictError(f"messages[{i}] must be an object with role system|user|assistant", "invalid_request")
        content, texts = m.get("content"), []
        parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
        if not isinstance(parts, list):
            raise PredictError(f"messages[{i}].content must be a string or a list of parts", "invalid_request")
        for j, p in enumerate(parts):
            kind = p.get("type") if isinstance(p, dict) else None
            if kind == "text" and isinstance(p.get("text"), str):
                texts.append(p["text"])
            elif kind == "image_url" and isinstance(p.get("image_url"), dict):
                images.append(load_image_url(p["image_url"].get("url"), limits, f"messages[{i}].content[{j}]"))
            else:
                raise PredictError(f"messages[{i}].content[{j}] must be a text or image_url part", "invalid_request")
        text = "\n".join(texts)
        if m["role"] in ("system", "developer"):
            system.append(text)
        else:
            turns.append({"role": m["role"], "content": text})
    if len(images) > 1:
        raise PredictError(f"{len(images)} images were sent; the model takes one image per conversation",
                           "invalid_image")
    if system and turns:
        turns[0]["content"] = "\n".join(system + [turns[0]["content"]])
    boxes, fmt = parse_regions(body.get("regions"), len(images), limits)
    return (images[0] if images else None), turns, boxes, fmt


def parse_regions(regions, n_images: int, limits: Limits) -> tuple[list, str]:
    """The ``regions`` extension: ``[{"image": 0, "box": [x1,y1,x2,y2], "format": "pixels"|"normalized"}]``."""
    if regions is None:
        return [], "pixels"
    if not isinstance(regions, list):
        raise PredictError("'regions' must be a list of {image, box, format}", "invalid_request")
    if len(regions) > limits.max_regions:
        raise PredictError(f"{len(regions)} regions given; at most {limits.max_regions} are allowed",
                           "too_many_regions")
    boxes, formats = [], set()
    for i, r in enumerate(regions):
        if not isinstance(r, dict) or "box" not in r:
            raise PredictError(f"regions[{i}] must be an object with a 'box'", "invalid_request")
        if int(r.get("image", 0)) >= max(n_images, 1) or n_images == 0:
            raise PredictError(f"regions[{i}] refers to image {r.get('image', 0)} but {n_images} image(s) were sent",
                               "invalid_box")
        formats.add(r.get("format", "pixels"))
        boxes.append(r["box"])
    if len(formats) > 1:
        raise PredictError("all regions of a request must use the same format", "invalid_box")
    return boxes, (formats.pop() if formats else "pixels")
