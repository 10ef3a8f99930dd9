"""Write pipe ``process`` stages in Python.

A ``process`` stage runs a program that talks to pipe over stdin/stdout (the contract is
``plugins/PROTOCOL.md``, version 1). This module speaks that protocol, so a plugin is one
decorated function::

    import pyarrow as pa
    import pyarrow.compute as pc
    from pipe_plugin import stage

    @stage(adds={"chars": pa.int64()})
    def count_chars(batch, ctx):
        return ctx.with_columns(batch, chars=pc.utf8_length(batch["text"]))

    if __name__ == "__main__":
        count_chars.run()

Two modes:

* **batch mode** (the default): ``fn(batch: pa.RecordBatch, ctx) -> RecordBatch | Table | None``
  receives each input batch and returns the rows it became (``None``: no rows).
* **row mode** (``@stage(rows=True, adds=...)``): ``fn(row: dict, ctx) -> dict | None`` is
  called for each row; the returned values are merged into the row, ``None`` drops it, and an
  exception becomes that row's error (``"ExcType: message"``).

The output schema is declared at describe time, before any data moves: by ``schema=`` (a
``pa.Schema``, or ``callable(input_schema, params) -> pa.Schema``), by ``adds=`` (input fields
plus these), or, in batch mode without either, inferred by calling ``fn`` once on an empty batch
of the input schema.

The package depends on pyarrow only. ``python -m pipe_plugin SCRIPT ...`` runs a plugin over
local files the way pipe would (see ``python -m pipe_plugin --help``), and
:func:`run_batches` does the same in-process, for unit tests.

:func:`trainer` (``@trainer``, module :mod:`pipe_plugin.trainer`) makes a training program for
the ``train`` stage (plugins/TRAINING.md): ``fn(ctx)`` gets the dataset (``ctx.table``,
``ctx.column(name)`` as numpy), ``ctx.params``, ``ctx.out``, ``ctx.seed`` and ``ctx.log(step=,
total=, **metrics)``.
"""

from __future__ import annotations

# The package's modules, along the protocol's layers (every name below was a name of the former
# single-file module pipe_plugin.py, and stays importable from pipe_plugin):
#   constants  __version__, PROTOCOL, TEXT_TYPES, BINARY_TYPES
#   errors     ConfigError, PluginError; one-line messages and stderr diagnostics
#   params     Param, REQUIRED, check_params, require_column
#   context    Context
#   stages     stage, Stage
#   session    the protocol without the transport (_Session), result shaping
#   ipc        the Arrow IPC codec of payloads
#   wire       header-line framing of messages
#   serve      the run loop on stdin/stdout (and stdout protection when pipe starts the process)
#   local      run_batches, LocalRun: testing without pipe
#   formats    table file extension -> format (python -m pipe_plugin --table/--out)
#   cli        python -m pipe_plugin
#   trainer    trainer, Trainer, TrainContext, run_trainer: programs for the train stage
#              (plugins/TRAINING.md), and stdout protection when pipe started the trainer

from .constants import BINARY_TYPES, PROTOCOL, TEXT_TYPES, __version__
from .errors import ConfigError, PluginError
from .params import REQUIRED, Param, check_params, require_column
from .context import Context
from .stages import Stage, stage
from .serve import _protect_stdout, _serve  # importing serve protects stdout when pipe started us
from .local import LocalRun, run_batches
from .trainer import TrainContext, Trainer, run_trainer, trainer  # protects stdout under pipe's train stage

# Private helpers, importable from pipe_plugin as before the split (tests use some of them).
from .errors import _clip, _exc_line, _log
from .params import (
    _TYPE_NAMES,
    _close,
    _coerce,
    _describe_wanted,
    _Required,
    _show,
    _toml,
    _toml_key,
    _type_matches,
)
from .context import _to_arrow
from .stages import _as_fields, _merge
from .session import (
    _FLOAT_MANTISSA,
    _INT_WIDTH,
    _UINT_WIDTH,
    _BadValues,
    _drop_ids,
    _InferError,
    _rows_to_table,
    _schema_diff,
    _Session,
    _widens,
)
from .ipc import _EOS, _has_dictionary, _ipc_parts, _one_batch, _open, _schema_cache
from .wire import _encode, _write_all, _Wire
from .local import _as_batches, _roundtrip
from .cli import _cli, _local_files, _read_table, _write_table

__all__ = [
    "PROTOCOL",
    "BINARY_TYPES",
    "TEXT_TYPES",
    "ConfigError",
    "Context",
    "LocalRun",
    "Param",
    "PluginError",
    "REQUIRED",
    "Stage",
    "TrainContext",
    "Trainer",
    "check_params",
    "require_column",
    "run_batches",
    "run_trainer",
    "stage",
    "trainer",
]
