"""API keys given to gpumod (a flag, the environment, a key file): refused when unusable.

A key travels in an HTTP header (``Authorization: Bearer KEY``) and is compared byte for byte,
so it must be printable ASCII without spaces; a blank key (one space, an empty key file) would
protect nothing while looking as if it did.
"""

from __future__ import annotations

import re

from .errors import SettingInvalid

KEY_RE = re.compile(r"^[\x21-\x7e]+$")


def checked_api_key(key: str, source: str) -> str:
    """The key (a key file's trailing newline dropped); SettingInvalid naming ``source`` otherwise."""
    key = key.removesuffix("\n").removesuffix("\r")
    if not key.strip():
        raise SettingInvalid(f"the API key from {source} is blank")
    if not KEY_RE.match(key):
        raise SettingInvalid(f"the API key from {source} contains spaces, control or non-ASCII characters "
                             "(it travels in an HTTP header: use printable ASCII only)")
    return key
