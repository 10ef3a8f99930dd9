"""Training programs for pipe's ``train`` stage: the :func:`trainer` decorator, the
:class:`TrainContext` the function gets, and the run that speaks the stage's interface
(plugins/TRAINING.md, protocol 1)::

    from pipe_plugin import trainer

    @trainer(params={"epochs": 5}, outputs=["model.npz"])
    def train(ctx):
        x = ctx.column("image")              # numpy, [rows, *shape] for a tensor column
        for step in range(1, ctx.params["epochs"] + 1):
            ...
            ctx.log(step=step, total=ctx.params["epochs"], loss=loss)
        numpy.savez(ctx.output("model.npz"), w=w)

    if __name__ == "__main__":
        train.run()

Under pipe (``PIPE_TRAIN_PROTOCOL`` set), the dataset, params, output folder and seed come from
the ``PIPE_TRAIN_*`` environment variables; otherwise from the command line
(``--data FILE --params FILE --out DIR --seed N``), so the same file trains without pipe.

Stdout carries the progress lines only: when pipe starts the program, file descriptor 1 is
pointed at stderr as soon as the SDK is imported (``print``, C libraries and child processes
included), and :meth:`TrainContext.log` writes to the real stdout.
"""

from __future__ import annotations

import functools
import json
import math
import numbers
import operator
import os
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import pyarrow as pa

from .constants import __version__
from .errors import ConfigError, PluginError, _exc_line, _log
from .params import check_params

#: The version of the train interface (plugins/TRAINING.md) this module speaks, as pipe gives it
#: in ``PIPE_TRAIN_PROTOCOL``.
TRAIN_PROTOCOL = 1

_ENV = ("PIPE_TRAIN_DATA", "PIPE_TRAIN_PARAMS", "PIPE_TRAIN_OUT", "PIPE_TRAIN_SEED")
_EXT_NAME = "ARROW:extension:name"
_EXT_META = "ARROW:extension:metadata"
_TENSOR = "arrow.fixed_shape_tensor"


# -- stdout --------------------------------------------------------------------------------------

_lock = threading.Lock()
_progress_out: Any = None  # where progress lines go once stdout is protected (a binary file)


def _protect_stdout() -> None:
    """Keeps stdout for progress lines: file descriptor 1 is duplicated for :meth:`TrainContext.log`,
    then pointed at stderr (so that ``print``, C libraries and child processes that write to
    stdout reach stderr), and ``sys.stdout`` becomes ``sys.stderr``. Idempotent."""
    global _progress_out
    if _progress_out is not None:
        return
    for stream in (sys.stdout, sys.__stdout__):
        try:
            stream.flush()
        except Exception:
            pass
    try:
        real = os.dup(1)  # not inherited by child processes
        os.dup2(2, 1)
        _progress_out = os.fdopen(real, "wb", buffering=0)
    except (OSError, ValueError):  # no usable descriptors: protect print() at least
        _progress_out = sys.__stdout__.buffer if sys.__stdout__ is not None else open(os.devnull, "wb")
    sys.stdout = sys.stderr


def _emit_line(line: str) -> None:
    """One progress line on the protected stdout, flushed."""
    _protect_stdout()
    data = (line + "\n").encode("utf-8")
    with _lock:
        out = _progress_out
        view = memoryview(data)
        while view:
            n = out.write(view)
            view = view[n if n is not None else len(view):]
        out.flush()


if os.environ.get("PIPE_TRAIN_PROTOCOL") is not None and os.environ.get("_PIPE_TRAIN_PID") in (None, str(os.getpid())):
    # Started by pipe's train stage: protect the progress lines from prints made before run().
    # A child process that inherits the environment and imports the SDK is left alone (its
    # stdout is its parent's business; fd 1 it inherited already goes to stderr).
    os.environ["_PIPE_TRAIN_PID"] = str(os.getpid())
    _protect_stdout()


# -- numpy ---------------------------------------------------------------------------------------


def tensor_shape(field: pa.Field) -> list[int] | None:
    """The per-row shape of a tensor column, or ``None`` for another column.

    A tensor column is the ``arrow.fixed_shape_tensor`` extension type, or a FixedSizeList whose
    field metadata holds that extension's name and ``{"shape": [...]}`` (how pipe writes it when
    the extension type is not registered), or any other numeric FixedSizeList (1-D, its size)."""
    t = field.type
    if isinstance(t, pa.FixedShapeTensorType):
        shape, perm = list(t.shape), t.permutation
        return [shape[i] for i in perm] if perm else shape
    if isinstance(t, pa.BaseExtensionType):
        t = t.storage_type
    if not pa.types.is_fixed_size_list(t):
        return None
    meta = field.metadata or {}
    if meta.get(_EXT_NAME.encode()) == _TENSOR.encode():
        try:
            shape = json.loads(meta.get(_EXT_META.encode(), b"{}")).get("shape")
            if isinstance(shape, list) and all(isinstance(d, int) and d > 0 for d in shape) and math.prod(shape) == t.list_size:
                return shape
        except (ValueError, AttributeError):
            pass
    return [t.list_size]


def to_numpy(column: pa.ChunkedArray | pa.Array, field: pa.Field | None = None):
    """A column as a writable numpy array: a tensor column (see :func:`tensor_shape`) as
    ``[rows, *shape]`` of its value type, any other column as ``[rows]`` (text and nested values
    as Python objects; nulls as NaN in numeric columns, ``None`` otherwise).

    ``field`` gives the column's metadata (pass ``table.schema.field(name)``); without it, a
    FixedSizeList is 1-D. Raises ``ValueError`` for a tensor column with null rows."""
    try:
        import numpy  # noqa: F401  (pyarrow converts with it)
    except ImportError:
        raise ImportError("numpy arrays of the dataset need numpy: pip install numpy (ctx.table needs only pyarrow)") from None
    name = field.name if field is not None else "column"
    if field is None:
        field = pa.field(name, column.type)
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    shape = tensor_shape(field)
    if shape is None:
        out = column.to_numpy(zero_copy_only=False)
    else:
        if column.null_count:
            raise ValueError(f"column {name!r}: {column.null_count} of {len(column)} rows hold no tensor (null)")
        if isinstance(column, pa.FixedShapeTensorArray) and column.type.permutation not in (None, list(range(len(shape)))):
            out = column.to_numpy_ndarray()
        else:
            storage = column.storage if isinstance(column, pa.ExtensionArray) else column
            values = storage.flatten().to_numpy(zero_copy_only=False)
            out = values.reshape([len(column), *shape])
    if not out.flags.writeable:
        out = out.copy()
    return out


class _Arrays(Mapping):
    """``ctx.arrays``: column name -> numpy array, converted when first asked for."""

    def __init__(self, ctx: "TrainContext"):
        self._ctx = ctx

    def __getitem__(self, name: str):
        return self._ctx.column(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._ctx.table.column_names)

    def __len__(self) -> int:
        return self._ctx.table.num_columns

    def __repr__(self) -> str:
        return f"<arrays of {', '.join(self._ctx.table.column_names)}>"


# -- the context ---------------------------------------------------------------------------------


class TrainContext:
    """What a trainer function gets.

    Attributes:
        table: the dataset, a ``pa.Table`` (rows in id order; under pipe, memory-mapped).
        arrays: a mapping of column name -> numpy array (see :meth:`column`), converted on first use.
        params: the stage's params (a dict; checked, with defaults, when ``@trainer(params=...)``).
        out: the folder to write the outputs into, a ``pathlib.Path``.
        seed: the pipeline seed, an ``int``.
        stage: the stage id (``PIPE_STAGE``), or the function's name.
        outputs: the declared output names (``@trainer(outputs=...)``), or ``None``.
        logs: every progress record :meth:`log` wrote, in order (dicts as on stdout).
        state: a dict for anything the function wants to keep.
    """

    def __init__(
        self,
        table: pa.Table,
        params: dict,
        out: Path,
        seed: int,
        *,
        stage: str = "train",
        outputs: list[str] | None = None,
        emit: Callable[[str], None] | None = _emit_line,
    ):
        self.table = table
        self.params = params
        self.out = Path(out)
        self.seed = seed
        self.stage = stage
        self.outputs = outputs
        self.logs: list[dict] = []
        self.state: dict = {}
        self.arrays: Mapping[str, Any] = _Arrays(self)
        self._emit = emit
        self._numpy: dict[str, Any] = {}

    def column(self, name: str):
        """The column ``name`` as a writable numpy array: a tensor column as ``[rows, *shape]``
        (float32 as pipe makes them), another column as ``[rows]``. The same array each time
        (converted once). ``KeyError`` names the columns there are."""
        if name not in self._numpy:
            i = self.table.schema.get_field_index(name)
            if i < 0:
                raise KeyError(f"no column {name!r} in the dataset (it has: {', '.join(self.table.column_names)})")
            self._numpy[name] = to_numpy(self.table.column(i), self.table.schema.field(i))
        return self._numpy[name]

    def output(self, name: str) -> Path:
        """The path to write the output ``name`` to (``ctx.out / name``). ``name`` is a plain file
        name, one of the declared ``outputs`` when the trainer declares them."""
        if not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\\" in name:
            raise ValueError(f"ctx.output({name!r}): an output is a plain file name in the output folder (no '/' or '..')")
        if self.outputs is not None and name not in self.outputs:
            raise ValueError(f"ctx.output({name!r}): not a declared output (outputs: {', '.join(self.outputs)})")
        return self.out / name

    def log(self, step: int, total: int | None = None, **metrics: Any) -> None:
        """Reports progress: prints ``{"step": .., "total": .., "metrics": {..}}`` as one line on
        stdout (flushed), which pipe shows as a progress bar and keeps as the metric series.

        :param step: the step reached, an integer >= 0.
        :param total: the number of steps, when known (pipe keeps the last one given).
        :param metrics: name=value, each a finite number (a Python or numpy number, or anything
            with ``.item()`` giving one, such as a one-element tensor). Names that are not
            identifiers: ``ctx.log(step=s, **{"val/loss": v})``.
        """
        record: dict[str, Any] = {"step": _count("step", step)}
        if total is not None:
            record["total"] = _count("total", total)
        if metrics:
            record["metrics"] = {str(k): _metric(record["step"], str(k), v) for k, v in metrics.items()}
        line = json.dumps(record, allow_nan=False, separators=(",", ":"))
        self.logs.append(record)
        if self._emit is not None:
            self._emit(line)

    def __repr__(self) -> str:
        return f"<TrainContext {self.stage}: {self.table.num_rows} rows, out={self.out}, seed={self.seed}>"


def _count(what: str, value: Any) -> int:
    if isinstance(value, bool) or not _is_integer(value):
        raise TypeError(f"ctx.log(): {what} must be an integer, got {value!r} ({type(value).__name__})")
    n = operator.index(value)
    if n < 0:
        raise ValueError(f"ctx.log(): {what} must be >= 0, got {n}")
    return n


def _is_integer(value: Any) -> bool:
    try:
        operator.index(value)
        return True
    except TypeError:
        return False


def _metric(step: int, name: str, value: Any) -> int | float:
    got = value
    if not isinstance(value, numbers.Number) and hasattr(value, "item"):
        try:
            value = value.item()  # numpy 0-d arrays, one-element tensors
        except Exception:
            shape = getattr(value, "shape", None)
            shape = f" of shape {list(shape)}" if shape is not None else ""
            raise TypeError(
                f"ctx.log(step={step}): metric {name!r} must be one number, got a {type(got).__name__}{shape} "
                "(log a reduction, e.g. loss.mean())"
            ) from None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"ctx.log(step={step}): metric {name!r} must be a finite number, got {got!r:.60} ({type(got).__name__})")
    if isinstance(value, numbers.Integral):
        return int(value)
    x = float(value)
    if not math.isfinite(x):
        raise ValueError(
            f"ctx.log(step={step}): metric {name!r} is {x}; metrics must be finite numbers "
            "(a NaN or infinite loss usually means that the training diverged)"
        )
    return x


# -- the trainer ---------------------------------------------------------------------------------


class _Failure(PluginError):
    """A problem found before or after ``fn`` runs (bad inputs, a missing output): one message,
    no traceback. :meth:`Trainer.run_local` raises it as a :class:`PluginError`."""


class Trainer:
    """A training program made by :func:`trainer`. Call :meth:`run` under
    ``if __name__ == "__main__":`` (calling the trainer with no arguments does the same).

    The decorated function stays callable with a context (``train(ctx)``).
    """

    def __init__(
        self,
        fn: Callable[[TrainContext], Any],
        *,
        params: Mapping[str, Any] | None = None,
        outputs: list[str] | None = None,
        name: str | None = None,
    ):
        if not callable(fn):
            raise TypeError("@trainer decorates a function train(ctx)")
        if isinstance(outputs, str):
            outputs = [outputs]
        self.fn = fn
        self.params = dict(params) if params is not None else None
        self.outputs = list(outputs) if outputs is not None else None
        self.name = name or getattr(fn, "__name__", "train")
        functools.update_wrapper(self, fn)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if not args and not kwargs:
            return self.run()
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<pipe_plugin.Trainer {self.name}>"

    def run(self, argv: list[str] | None = None) -> None:
        """Trains and exits: under pipe (``PIPE_TRAIN_PROTOCOL`` set) with the ``PIPE_TRAIN_*``
        environment, else with the command line ``argv`` (default ``sys.argv[1:]``; see
        ``--help``). Exit status 0 when the function returned (and wrote the declared outputs),
        1 when it raised (traceback and a ``pipe_plugin: ...`` line on stderr) or the inputs are
        wrong, 130 on Ctrl-C."""
        sys.exit(self._main(argv))

    main = run

    def run_local(
        self,
        data: Any,
        params: Mapping[str, Any] | None = None,
        out: str | os.PathLike | None = None,
        seed: int = 0,
        *,
        echo: bool = False,
    ) -> TrainContext:
        """Runs the function in this process, for tests: ``data`` is a ``pa.Table`` (or
        RecordBatch, list of dicts, or a table file name), ``out`` the output folder (default: a
        new temporary folder). Returns the context (``.logs``, ``.out``); exceptions propagate, and
        a declared output left unwritten raises :class:`PluginError`. ``echo`` also prints the
        progress lines on stdout."""
        if isinstance(data, (str, os.PathLike)):
            table = _load_local(str(data))
        elif isinstance(data, pa.RecordBatch):
            table = pa.Table.from_batches([data])
        elif isinstance(data, list):
            table = pa.Table.from_pylist(data)
        else:
            table = data
        if out is None:
            import tempfile

            out = tempfile.mkdtemp(prefix=f"{self.name}-")
        Path(out).mkdir(parents=True, exist_ok=True)
        ctx = TrainContext(
            table, self._check_params(dict(params or {})), Path(out), int(seed),
            stage=self.name, outputs=self.outputs, emit=(lambda line: print(line, flush=True)) if echo else None,
        )
        self.fn(ctx)
        self._check_outputs(ctx)
        return ctx

    # -- the run -----------------------------------------------------------------------------

    def _main(self, argv: list[str] | None) -> int:
        under_pipe = any(os.environ.get(k) is not None for k in ("PIPE_TRAIN_PROTOCOL", *_ENV))
        started = time.monotonic()
        try:
            ctx = self._from_env() if under_pipe else self._from_args(argv)
        except _Failure as e:
            _log(str(e))
            return 1
        except ConfigError as e:
            _log(f"params: {e}")
            return 1
        try:
            self.fn(ctx)
        except KeyboardInterrupt:
            _log(f"{self.name}() interrupted")
            return 130
        except Exception as e:
            traceback.print_exception(type(e), e, e.__traceback__.tb_next)  # from the user's frame on
            _log(f"{self.name}() failed: {_exc_line(e)}")
            return 1
        try:
            self._check_outputs(ctx)
        except _Failure as e:
            _log(str(e))
            return 1
        if not under_pipe:
            wrote = sorted(p.name for p in ctx.out.iterdir()) if ctx.out.is_dir() else []
            _log(f"{self.name}() done in {time.monotonic() - started:.1f} s; {ctx.out}: {', '.join(wrote) or 'nothing written'}")
        return 0

    def _from_env(self) -> TrainContext:
        _protect_stdout()
        protocol = os.environ.get("PIPE_TRAIN_PROTOCOL")
        if protocol != str(TRAIN_PROTOCOL):
            got = "is not set" if protocol is None else f"is {protocol!r}"
            raise _Failure(
                f"PIPE_TRAIN_PROTOCOL {got}: this trainer speaks train protocol {TRAIN_PROTOCOL} "
                f"(pipe_plugin {__version__}); run it from a pipe that speaks protocol {TRAIN_PROTOCOL}, "
                "or upgrade pipe_plugin (without pipe, run it with --data/--params/--out/--seed)"
            )
        missing = [k for k in _ENV if not os.environ.get(k)]
        if missing:
            raise _Failure(f"{', '.join(missing)} not set: pipe's train stage sets {', '.join(_ENV)}")
        seed_text = os.environ["PIPE_TRAIN_SEED"]
        try:
            seed = int(seed_text)
        except ValueError:
            raise _Failure(f"PIPE_TRAIN_SEED is {seed_text!r}, not an integer") from None
        data_path = os.environ["PIPE_TRAIN_DATA"]
        try:
            table = _read_ipc(data_path)
        except (OSError, pa.ArrowException) as e:
            raise _Failure(f"cannot read the dataset PIPE_TRAIN_DATA={data_path}: {_exc_line(e)}") from None
        params = _read_params(os.environ["PIPE_TRAIN_PARAMS"], "PIPE_TRAIN_PARAMS=")
        out = Path(os.environ["PIPE_TRAIN_OUT"])
        if not out.is_dir():
            raise _Failure(f"PIPE_TRAIN_OUT={out} is not a folder")
        stage = os.environ.get("PIPE_STAGE") or self.name
        return TrainContext(table, self._check_params(params), out, seed, stage=stage, outputs=self.outputs)

    def _from_args(self, argv: list[str] | None) -> TrainContext:
        import argparse

        from .formats import expected_extensions

        prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] not in ("", "-c") else self.name
        parser = argparse.ArgumentParser(
            prog=prog,
            description=f"Train without pipe, as pipe's train stage would run {self.name}(): progress lines "
            "on stdout, everything else on stderr. Under pipe, the PIPE_TRAIN_* environment gives these instead.",
        )
        parser.add_argument("--data", required=True, metavar="FILE", help=f"the dataset: {expected_extensions()}; rows are put in id order as pipe does (an id column is added when there is none)")
        parser.add_argument("--params", default="{}", metavar="JSON", help="the params: a JSON file, or JSON text (default {})")
        parser.add_argument("--out", required=True, metavar="DIR", help="the folder to write the outputs into (made if missing)")
        parser.add_argument("--seed", type=int, default=0, help="the seed (default 0)")
        a = parser.parse_args(argv)
        if a.params.lstrip().startswith("{"):
            try:
                params = json.loads(a.params)
            except json.JSONDecodeError as e:
                raise _Failure(f"--params is not JSON: {e}") from None
            if not isinstance(params, dict):
                raise _Failure("--params must be a JSON object")
        else:
            params = _read_params(a.params, "--params ")
        if not os.path.isfile(a.data):
            raise _Failure(f"--data {a.data}: no such file")
        try:
            table = _load_local(a.data)
        except (OSError, ValueError, pa.ArrowException) as e:
            raise _Failure(f"cannot read --data {a.data}: {_exc_line(e)}") from None
        out = Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        _protect_stdout()
        return TrainContext(table, self._check_params(params), out, a.seed, stage=self.name, outputs=self.outputs)

    def _check_params(self, params: dict) -> dict:
        return check_params(params, self.params) if self.params is not None else params

    def _check_outputs(self, ctx: TrainContext) -> None:
        if self.outputs is None:
            return
        missing = [n for n in self.outputs if not (ctx.out / n).is_file()]
        if missing:
            raise _Failure(
                f"{self.name}() returned without writing {', '.join(missing)} into {ctx.out} "
                f"(declared outputs: {', '.join(self.outputs)})"
            )


def _read_ipc(path: str) -> pa.Table:
    """An Arrow IPC file, memory-mapped (an IPC stream is read too)."""
    source = pa.memory_map(path)
    try:
        return pa.ipc.open_file(source).read_all()
    except pa.ArrowInvalid:
        return pa.ipc.open_stream(pa.memory_map(path)).read_all()


def _load_local(path: str) -> pa.Table:
    """A table file as the train stage would hand it over: an id column (Utf8), rows in id order."""
    import pyarrow.compute as pc

    from .cli import _read_table
    from .formats import expected_extensions, table_format

    if table_format(path) is None:  # checked first: the reader would exit
        raise ValueError(f"{path}: expected {expected_extensions()}")
    table = _read_table(path)
    return table.take(pc.sort_indices(table, [("id", "ascending")]))


def _read_params(path: str, what: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            params = json.load(f)
    except OSError as e:
        raise _Failure(f"cannot read the params {what}{path}: {_exc_line(e)}") from None
    except json.JSONDecodeError as e:
        raise _Failure(f"the params {what}{path} are not JSON: {e}") from None
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise _Failure(f"the params {what}{path} are a JSON {type(params).__name__}, not an object")
    return params


def trainer(
    fn: Callable | None = None,
    /,
    *,
    params: Mapping[str, Any] | None = None,
    outputs: list[str] | None = None,
    name: str | None = None,
) -> Any:
    """Makes ``fn(ctx: TrainContext)`` a training program for pipe's ``train`` stage; use bare
    (``@trainer``) or with options, then call ``.run()`` under ``if __name__ == "__main__":``.

    :param params: the params the trainer takes, ``{"key": default}`` or ``{"key": Param(...)}``
        as for ``@stage``: unknown keys, missing required keys and wrong types stop the program
        with a message before training, and ``ctx.params`` has every key. Without it, params
        arrive unchecked.
    :param outputs: the files it writes (the stage's ``outputs``): ``ctx.output`` accepts only
        these, and the program fails naming any it did not write.
    :param name: a name for messages (default: the function's).
    """

    def wrap(f: Callable) -> Trainer:
        return Trainer(f, params=params, outputs=outputs, name=name)

    return wrap(fn) if fn is not None else wrap


def run_trainer(fn: Callable[[TrainContext], Any], argv: list[str] | None = None, **options: Any) -> None:
    """``trainer(fn, **options).run(argv)``: trains with ``fn`` and exits."""
    (fn if isinstance(fn, Trainer) else trainer(fn, **options)).run(argv)
