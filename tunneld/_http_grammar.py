"""RFC 9110 grammar shared by the HTTP server (``tunneld.http``) and the client codec.

A module of its own that imports nothing of tunneld: the sans-IO client codec
(``tunneld._http1_client``) shares it without importing the server package.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["TOKEN", "TOKEN_PATTERN"]

# RFC 9110 §5.6.2: token = 1*tchar (a method, a field name, an Upgrade protocol name).
TOKEN_PATTERN: Final = r"[-!#$%&'*+.^_`|~0-9A-Za-z]+"
TOKEN: Final = re.compile(TOKEN_PATTERN)
