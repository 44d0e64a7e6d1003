"""What every synthetic writer shares: the error type, argument checks, random streams, file encodings."""
import io
import json
import zlib

import numpy as np
from PIL import Image

JPEG_QUALITY = 90


class SyntheticDataError(ValueError):
    """Bad arguments or an output folder that must not be written to, with a one-line message."""


def check_integer(name, value, low):
    """Raise :class:`SyntheticDataError` unless ``value`` is an integer (not a bool) >= ``low``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise SyntheticDataError(f"{name} must be an integer >= {low}, got {value!r}")


def random_stream(seed, *stream):
    """An independent random stream per (seed, kind, split): writing one kind never shifts another's."""
    return np.random.default_rng([seed] + [zlib.crc32(s.encode()) for s in stream])


def json_bytes(data, indent=None):
    """JSON as COCO files write it: compact, or indented with ``indent``."""
    separators = (",", ":") if indent is None else (",", ": ")
    return json.dumps(data, indent=indent, separators=separators).encode()


def jpeg_bytes(pixels):
    """An RGB uint8 array as JPEG file contents."""
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def png_bytes(pixels):
    """An RGB uint8 array as PNG file contents."""
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()
