"""Table files: which format a file's extension means. The one mapping the SDK uses, for
``python -m pipe_plugin --table FILE`` (reading) and ``--out FILE`` (writing).

Extensions are matched case-insensitively on the end of the path. Reading accepts only these;
writing writes anything else as JSON lines (as the SDK always has).
"""

from __future__ import annotations

#: File extension (lower case, with its dot) -> table format: "parquet", "csv", "jsonl"
#: (one JSON object a line) or "arrow" (an Arrow IPC file, or an IPC stream when reading).
#: The same mapping as pipe's collect.table and sink.table (pipeline/src/formats.rs; a test there
#: checks that the two agree, so change both together).
TABLE_EXTENSIONS: dict[str, str] = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".arrow": "arrow",
    ".ipc": "arrow",
    ".feather": "arrow",
}

def table_format(path: str) -> str | None:
    """The format of the table file ``path``, by its extension, or ``None`` when it has none
    of :data:`TABLE_EXTENSIONS`."""
    low = path.lower()
    for ext, fmt in TABLE_EXTENSIONS.items():
        if low.endswith(ext):
            return fmt
    return None


def expected_extensions() -> str:
    """The accepted extensions for messages, one group per format: ``.parquet/.pq, .csv,
    .jsonl/.ndjson or .arrow/.ipc/.feather``."""
    groups: dict[str, list[str]] = {}
    for ext, fmt in TABLE_EXTENSIONS.items():
        groups.setdefault(fmt, []).append(ext)
    shown = ["/".join(exts) for exts in groups.values()]
    return ", ".join(shown[:-1]) + " or " + shown[-1] if len(shown) > 1 else shown[0]
