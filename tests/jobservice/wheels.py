"""Tiny local wheels for staging tests: no network, no build tools."""
from __future__ import annotations

import base64
import hashlib
import zipfile
from pathlib import Path


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
    return "%s,sha256=%s,%d" % (name, digest.decode(), len(data))


def make_wheel(folder: Path, name: str, version: str, module_source: str) -> Path:
    """A pure-Python wheel holding one module ``name`` (``name.py``)."""
    dist_info = "%s-%s.dist-info" % (name, version)
    files = {
        "%s.py" % name: module_source.encode(),
        "%s/METADATA" % dist_info: (
            "Metadata-Version: 2.1\nName: %s\nVersion: %s\n" % (name, version)).encode(),
        "%s/WHEEL" % dist_info: (
            "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\n"
            "Tag: py3-none-any\n").encode(),
    }
    record = [_record_line(n, d) for n, d in files.items()] + ["%s/RECORD,," % dist_info]
    files["%s/RECORD" % dist_info] = ("\n".join(record) + "\n").encode()
    path = folder / ("%s-%s-py3-none-any.whl" % (name, version))
    with zipfile.ZipFile(path, "w") as zf:
        for n, d in files.items():
            zf.writestr(n, d)
    return path
