"""Constants of the SDK: its version, the protocol version it speaks, and the Arrow type groups
that :func:`~pipe_plugin.require_column` takes."""

from __future__ import annotations

import pyarrow as pa

__version__ = "0.1.0"

#: The protocol version this module speaks.
PROTOCOL = 1

#: Arrow types that hold text (Utf8 and its large and view variants).
TEXT_TYPES = (pa.string(), pa.large_string(), pa.string_view())
#: Arrow types that hold bytes (Binary and its large and view variants).
BINARY_TYPES = (pa.binary(), pa.large_binary(), pa.binary_view())
