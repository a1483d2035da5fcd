"""Safe by default: who may talk to the server, what an upload may be, and the certificate beyond loopback.

* a loopback server answers only requests that name it by a loopback name (``Host``): a web page elsewhere
  cannot reach it through DNS rebinding;
* any other bind needs a token (generated unless given), checked on every request: the page's address carries
  it (``?token=``, like Jupyter), which the page then sends as a header; a cookie lets thumbnails load;
* a request that says where it comes from (``Origin``) must come from the page itself;
* a request's body is read only up to its cap (:func:`read_body`): never more into memory;
* an upload is capped in bytes, then in pixels before its pixels are decoded (a decompression bomb is a few
  kilobytes that claim a huge picture), and must be an image PIL reads in full.
"""
from __future__ import annotations

import datetime
import hmac
import io
import ipaddress
import json
import logging
import os
import re
import secrets
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import numpy as np

if TYPE_CHECKING:
    from aiohttp import web

log = logging.getLogger(__name__)

TOKEN_HEADER = "X-Streamer-Token"
TOKEN_COOKIE = "streamer_token"
MAX_UPLOAD_BYTES = 16 * 1024 * 1024
MAX_JSON_BYTES = 128 * 1024  # a control request or a WebRTC offer
MAX_UPLOAD_PIXELS = 40_000_000  # a 48 MP photo is refused; a style needs far fewer (it is encoded at 512 px)
UPLOAD_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF")
LOOPBACK_NAMES = ("localhost",)


class Refused(Exception):
    """A request the server turns down: ``status`` (4xx) and one line for the page."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or localhost."""
    host = host.strip("[]")
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def new_token() -> str:
    return secrets.token_urlsafe(24)


def split_host(host_header: str) -> tuple[str, int | None]:
    """``"127.0.0.1:8080"`` -> ("127.0.0.1", 8080); ``"[::1]:80"`` -> ("::1", 80)."""
    m = re.fullmatch(r"\[([^\]]+)\](?::(\d+))?|([^:]+)(?::(\d+))?", host_header or "")
    if not m:
        return "", None
    host = m[1] or m[3] or ""
    port = m[2] or m[4]
    return host, int(port) if port else None


@dataclass(frozen=True)
class Guard:
    """The checks every request passes. ``token`` None: loopback only (no token needed)."""

    loopback: bool
    token: str | None
    scheme: str = "http"

    def check(self, method: str, host_header: str, origin: str | None, given_token: str | None) -> None:
        """Raise :class:`Refused` for a request the server must not serve."""
        host, _ = split_host(host_header)
        if self.loopback and not is_loopback(host):
            raise Refused(403, "this server answers only on its loopback address (127.0.0.1)")
        if origin is not None and origin != "null":
            o = urlsplit(origin)
            if (o.scheme, o.netloc.lower()) != (self.scheme, host_header.lower()):
                raise Refused(403, "requests from another site are refused (Origin does not match)")
        elif origin == "null":
            raise Refused(403, "requests from an opaque origin are refused")
        if self.token is not None:
            if not given_token or not hmac.compare_digest(given_token.encode(), self.token.encode()):
                raise Refused(403, "this server needs its token: open the address it printed (…/?token=…)")


# -- request bodies ---------------------------------------------------------------------------------
async def read_body(request: web.Request, cap: int) -> bytes:
    """The body, read up to ``cap + 1`` bytes (one more says it is too large): never more into memory."""
    chunks, size = [], 0
    while size <= cap:
        chunk = await request.content.read(min(1 << 16, cap + 1 - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


async def read_json(request: web.Request) -> dict:
    """The body as a JSON object, at most :data:`MAX_JSON_BYTES`; anything else is refused in one line."""
    if request.content_length is not None and request.content_length > MAX_JSON_BYTES:
        raise Refused(413, "request too large")
    raw = await read_body(request, MAX_JSON_BYTES)
    if len(raw) > MAX_JSON_BYTES:
        raise Refused(413, "request too large")
    try:
        body = json.loads(raw or b"{}")
    except (ValueError, UnicodeDecodeError):
        raise Refused(400, "the request is not JSON") from None
    if not isinstance(body, dict):
        raise Refused(400, "the request must be a JSON object")
    return body


# -- uploads ---------------------------------------------------------------------------------------
def check_upload(data: bytes, max_bytes: int = MAX_UPLOAD_BYTES, max_pixels: int = MAX_UPLOAD_PIXELS) -> np.ndarray:
    """The image in ``data`` as RGB uint8, or :class:`Refused` (413 too large, 415 not an image we take)."""
    from PIL import Image, UnidentifiedImageError

    if len(data) > max_bytes:
        raise Refused(413, f"the file is too large ({len(data) / 1e6:.1f} MB); the limit is {max_bytes / 1e6:.0f} MB")
    if not data:
        raise Refused(415, "the file is empty: drop an image (PNG, JPEG, WebP, ...)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = Image.open(io.BytesIO(data))
            if img.format not in UPLOAD_FORMATS:
                raise Refused(415, f"{img.format or 'this'} images are not taken: use PNG, JPEG, WebP, BMP, GIF or TIFF")
            w, h = img.size
            if w * h > max_pixels or max(w, h) > 16384:
                raise Refused(413, f"the image is too large ({w}x{h} = {w * h / 1e6:.0f} megapixels); the limit is "
                                   f"{max_pixels / 1e6:.0f} megapixels")
            img.load()
            from streamer.imageio import _to_rgb8

            rgb, _ = _to_rgb8(img)
    except Refused:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError):
        raise Refused(415, "this file is not an image (or a damaged one): drop a PNG, JPEG or WebP") from None
    if min(rgb.shape[:2]) < 16:
        raise Refused(415, f"the image is too small ({rgb.shape[1]}x{rgb.shape[0]}); a style needs at least 16 px a side")
    return np.ascontiguousarray(rgb)


def style_name(given: str | None, fallback: str) -> str:
    """A display name from the client's file name: letters, digits and ``_-. `` only, no folders, at most 60."""
    stem = Path((given or "").replace("\\", "/").split("/")[-1]).stem
    clean = re.sub(r"[^\w\- .]", "", stem, flags=re.ASCII).strip(" .")[:60]
    return clean or fallback


# -- TLS -------------------------------------------------------------------------------------------
def self_signed(folder: Path, host: str) -> tuple[Path, Path]:
    """A certificate for ``host`` (and localhost) made on first use, kept in ``folder`` (key readable by the owner
    only), remade when it does not name ``host`` or is about to expire."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    folder.mkdir(parents=True, exist_ok=True)
    safe = re.sub(r"[^\w.-]", "_", host)
    cert_path, key_path = folder / f"{safe}.crt", folder / f"{safe}.key"
    now = datetime.datetime.now(datetime.timezone.utc)
    if cert_path.is_file() and key_path.is_file():
        try:
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            if cert.not_valid_after_utc - now > datetime.timedelta(days=7):
                return cert_path, key_path
        except ValueError:
            pass
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName("localhost")]
    try:
        names.append(x509.IPAddress(ipaddress.ip_address(host)))
    except ValueError:
        if host:
            names.append(x509.DNSName(host))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"streamer serve {host}")])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=365))
            .add_extension(x509.SubjectAlternativeName(names), critical=False).sign(key, hashes.SHA256()))
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    log.info("made a self-signed certificate for %s: %s (browsers will ask you to accept it once)", host, cert_path)
    return cert_path, key_path
