"""Tests of pipe_plugin and of the plugins built on it, each spoken to over the real protocol.

Run from the repository root with a Python that has pyarrow, pillow and numpy:

    python plugins/python/tests/test_sdk.py          # or: python -m pytest plugins/python/tests

The plugins run as subprocesses of this Python, with plugins/python on PYTHONPATH.
"""

from __future__ import annotations

import contextlib
import glob
import importlib.util
import io
import json
import os
import subprocess
import sys
import unittest

import pyarrow as pa

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from protocol_client import EOF, REPO, SDK_DIR, Plugin, Timeout, ipc  # noqa: E402

sys.path.insert(0, SDK_DIR)
import pipe_plugin  # noqa: E402

FIXTURES = os.path.join(REPO, "tests", "fixtures", "plugins")
EXAMPLES = os.path.join(REPO, "examples", "python-plugins", "plugins")
TEST_PLUGINS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "plugins")
DIGITS = sorted(glob.glob(os.path.join(REPO, "examples", "digits", "data", "*.png")))
NOTES = sorted(glob.glob(os.path.join(REPO, "examples", "text-stats", "data", "**", "*.txt"), recursive=True))

# The input a stage after collect.table would see: id is never null.
SCHEMA = pa.schema([pa.field("id", pa.string(), False), ("text", pa.string()), ("n", pa.int64())])


def rows_batch(start: int, count: int, schema: pa.Schema = SCHEMA) -> pa.RecordBatch:
    ids = [f"r{i}" for i in range(start, start + count)]
    return pa.RecordBatch.from_arrays(
        [pa.array(ids, pa.string()), pa.array([f"text {i}" for i in range(start, start + count)]), pa.array(range(start, start + count), pa.int64())],
        schema=schema,
    )


def plugin(path: str, **kw) -> Plugin:
    return Plugin.script(path, **kw)


def misbehave(mode: str, at: str | None = "r70"):
    p = plugin(os.path.join(FIXTURES, "misbehave.py"))
    answer = p.describe(SCHEMA, {"mode": mode, "at": at} if at is not None else {"mode": mode})
    return p, answer


def load_module(path: str):
    spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(path))[0], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def files_batch(paths: list[str], root: str, extra: dict[str, bytes] | None = None) -> pa.RecordBatch:
    """Rows like collect.files with load = "bytes"."""
    ids = [os.path.relpath(p, root) for p in paths] + list(extra or {})
    data = [open(p, "rb").read() for p in paths] + list((extra or {}).values())
    schema = pa.schema(
        [
            pa.field("id", pa.string(), False),
            pa.field("path", pa.string(), False),
            pa.field("size", pa.uint64(), False),
            pa.field("content", pa.binary(), False),
        ]
    )
    return pa.RecordBatch.from_arrays(
        [pa.array(ids), pa.array(ids), pa.array([len(d) for d in data], pa.uint64()), pa.array(data, pa.binary())],
        schema=schema,
    )


def texts_batch(texts: dict[str, str | None]) -> pa.RecordBatch:
    """Rows like collect.files with load = "text" (text made nullable to test null handling)."""
    schema = pa.schema([pa.field("id", pa.string(), False), pa.field("path", pa.string(), False), pa.field("size", pa.uint64(), False), ("text", pa.string())])
    ids = list(texts)
    return pa.RecordBatch.from_arrays(
        [pa.array(ids), pa.array(ids), pa.array([len(t or "") for t in texts.values()], pa.uint64()), pa.array(list(texts.values()), pa.string())],
        schema=schema,
    )


class Protocol(unittest.TestCase):
    """The bare protocol, through the smallest plugin."""

    def test_passthrough_round_trip_with_two_batches_in_flight(self):
        with plugin(os.path.join(FIXTURES, "passthrough.py")) as p:
            answer = p.describe(SCHEMA)
            self.assertEqual(answer.type, "schema")
            self.assertEqual(answer.header["protocol"], 1)
            self.assertTrue(answer.schema.equals(SCHEMA))
            self.assertEqual(answer.reader().read_all().num_rows, 0)
            batches = [rows_batch(i * 64, 64) for i in range(4)]
            p.send_batch(0, batches[0])
            for seq in range(4):
                if seq + 1 < 4:
                    p.send_batch(seq + 1, batches[seq + 1])  # two in flight, as pipe may do
                result = p.recv()
                self.assertEqual(result.type, "result")
                self.assertEqual(result.header["seq"], seq)
                self.assertNotIn("errors", result.header)
                self.assertTrue(result.table().equals(pa.Table.from_batches([batches[seq]])))
            bye = p.end()
            self.assertEqual(bye.header, {"type": "bye", "bytes": 0})
            self.assertEqual(p.wait(), 0)
            self.assertEqual(p.stderr, "")

    def test_an_empty_batch_gets_an_empty_result(self):
        with plugin(os.path.join(FIXTURES, "passthrough.py")) as p:
            p.describe(SCHEMA)
            p.send({"type": "batch", "seq": 0, "rows": 0, "bytes": 0})
            result = p.recv()
            self.assertEqual(result.header, {"type": "result", "seq": 0, "bytes": 0})
            result = p.batch(1, rows_batch(0, 0))
            self.assertEqual((result.type, result.header["bytes"]), ("result", 0))
            p.end()
            self.assertEqual(p.wait(), 0)

    def test_an_unknown_protocol_version_is_refused(self):
        with plugin(os.path.join(FIXTURES, "passthrough.py")) as p:
            answer = p.describe(SCHEMA, protocol=2)
            self.assertEqual(answer.type, "error")
            self.assertIn("protocol 1", answer.header["message"])
            self.assertIn("not 2", answer.header["message"])
            self.assertIsNone(answer.payload)
            self.assertEqual(p.end().type, "bye")  # what `pipe validate` does next
            self.assertEqual(p.wait(), 0)

    def test_unknown_messages_and_header_keys_are_ignored(self):
        with plugin(os.path.join(FIXTURES, "passthrough.py")) as p:
            p.send({"type": "describe", "protocol": 1, "stage": "s", "params": {}, "later": [1, 2]}, ipc(SCHEMA))
            self.assertEqual(p.recv().type, "schema")
            p.send({"type": "progress", "note": "a later addition"}, ipc(SCHEMA))
            self.assertEqual(p.batch(0, rows_batch(0, 3)).type, "result")
            p.end()
            self.assertEqual(p.wait(), 0)

    def test_eof_without_end_exits_1_quietly(self):
        with plugin(os.path.join(FIXTURES, "passthrough.py")) as p:
            p.describe(SCHEMA)
            p.batch(0, rows_batch(0, 5))
            p.close_stdin()
            self.assertEqual(p.wait(), 1)
            self.assertEqual(p.stderr, "")

    def test_validate_only_describe_then_end(self):
        with plugin(os.path.join(EXAMPLES, "image_quality.py")) as p:
            answer = p.describe(files_batch([], "/").schema)
            self.assertEqual(answer.type, "schema")
            self.assertEqual(p.end().header, {"type": "bye", "bytes": 0})
            self.assertEqual(p.wait(), 0)


class Misbehave(unittest.TestCase):
    """Each mode of tests/fixtures/plugins/misbehave.py does what the host's tests expect."""

    def run_first_batch_ok(self, p: Plugin) -> None:
        """Batch 0 (r0..r63) passes; the tests misbehave at r70, in batch 1."""
        result = p.batch(0, rows_batch(0, 64))
        self.assertEqual(result.type, "result")
        self.assertEqual(result.table().column("seen").to_pylist(), [1] * 64)

    def test_ok(self):
        p, answer = misbehave("ok")
        with p:
            self.assertEqual(answer.type, "schema")
            self.assertEqual(answer.schema.field("seen").type, pa.int64())
            self.assertEqual(answer.schema.names, ["id", "text", "n", "seen"])
            self.run_first_batch_ok(p)
            result = p.batch(1, rows_batch(64, 64))  # holds r70: nothing happens
            self.assertEqual(result.table().num_rows, 64)
            p.end()
            self.assertEqual(p.wait(), 0)
            self.assertEqual(p.stderr, f"misbehave: pid {p.proc.pid}\n")

    def test_an_empty_at_means_the_first_row_of_every_batch(self):
        p, _ = misbehave("row-error", at="")
        with p:
            for seq in range(2):
                result = p.batch(seq, rows_batch(seq * 4, 4))
                self.assertEqual(result.header["errors"], [{"id": f"r{seq * 4}", "reason": "bad row"}])
            p.end()
            self.assertEqual(p.wait(), 0)
        p, _ = misbehave("wrong-schema", at="")
        with p:
            self.assertEqual(p.batch(0, rows_batch(0, 4)).schema.field("seen").type, pa.float32())

    def test_crash(self):
        p, _ = misbehave("crash")
        with p:
            self.run_first_batch_ok(p)
            p.send_batch(1, rows_batch(64, 64))
            with self.assertRaises(EOF):
                p.recv()
            self.assertEqual(p.wait(), 3)
            self.assertIn("misbehave: crashing on r70", p.stderr)

    def test_hang(self):
        p, _ = misbehave("hang")
        with p:
            self.run_first_batch_ok(p)
            p.send_batch(1, rows_batch(64, 64))
            with self.assertRaises(Timeout):
                p.recv(timeout=1.5)
            self.assertIsNone(p.proc.poll())

    def test_garbage(self):
        p, _ = misbehave("garbage")
        with p:
            self.run_first_batch_ok(p)
            p.send_batch(1, rows_batch(64, 64))
            msg = p.recv()
            self.assertEqual(msg.type, "garbage")
            self.assertEqual(msg.garbage, b"hello from print\n")
            self.assertEqual(p.recv().type, "result")  # and it goes on

    def test_exit(self):
        p, _ = misbehave("exit")
        with p:
            self.run_first_batch_ok(p)
            p.send_batch(1, rows_batch(64, 64))
            with self.assertRaises(EOF):
                p.recv()
            self.assertEqual(p.wait(), 0)

    def test_row_error(self):
        p, _ = misbehave("row-error")
        with p:
            self.run_first_batch_ok(p)
            result = p.batch(1, rows_batch(64, 64))
            self.assertEqual(result.header["errors"], [{"id": "r70", "reason": "bad row"}])
            ids = result.table().column("id").to_pylist()
            self.assertEqual(len(ids), 63)
            self.assertNotIn("r70", ids)
            p.end()
            self.assertEqual(p.wait(), 0)

    def test_raise(self):
        p, _ = misbehave("raise")
        with p:
            self.run_first_batch_ok(p)
            result = p.batch(1, rows_batch(64, 64))
            self.assertEqual(result.header, {"type": "failed", "seq": 1, "message": "ValueError: boom", "bytes": 0})
            self.assertEqual(p.batch(2, rows_batch(128, 64)).type, "result")  # keeps going
            self.assertEqual(p.end().type, "bye")
            self.assertEqual(p.wait(), 0)
            self.assertIn("Traceback", p.stderr)
            self.assertIn("ValueError: boom", p.stderr)
            self.assertIn("batch 1 (ids r64 .. r127, 64 rows)", p.stderr)

    def test_wrong_schema(self):
        p, answer = misbehave("wrong-schema")
        with p:
            self.assertEqual(answer.schema.field("seen").type, pa.int64())
            self.run_first_batch_ok(p)
            result = p.batch(1, rows_batch(64, 64))
            self.assertEqual(result.type, "result")
            self.assertEqual(result.schema.field("seen").type, pa.float32())  # sent as is
            p.end()
            self.assertEqual(p.wait(), 0)
            self.assertIn("seen: declared int64, got float", p.stderr)

    def test_config_error(self):
        p, answer = misbehave("config-error")
        with p:
            self.assertEqual(answer.type, "error")
            self.assertEqual(answer.header["key"], "at")
            self.assertTrue(answer.header["hint"])
            self.assertEqual(p.end().type, "bye")
            self.assertEqual(p.wait(), 0)

    def test_params_are_checked(self):
        for params, key, hint in [
            ({"mod": "crash"}, "mod", 'did you mean "mode"?'),
            ({"mode": "crassh"}, "mode", 'did you mean "crash"?'),
            ({"mode": "crash", "at": 70}, "at", 'at = "7"'),
        ]:
            with plugin(os.path.join(FIXTURES, "misbehave.py")) as p:
                answer = p.describe(SCHEMA, params)
                self.assertEqual((answer.type, answer.header["key"], answer.header["hint"]), ("error", key, hint), params)


class SdkFeatures(unittest.TestCase):
    def test_row_mode(self):
        with plugin(os.path.join(TEST_PLUGINS, "rows_features.py"), stage="feat") as p:
            answer = p.describe(SCHEMA, {"drop_every": 10})
            self.assertEqual(answer.schema.names, ["id", "text", "n", "upper", "len"])
            self.assertEqual(answer.schema.field("len").type, pa.int32())
            result = p.batch(0, rows_batch(0, 30))
            errors = {e["id"]: e["reason"] for e in result.header["errors"]}
            self.assertEqual(errors["r13"], "ValueError: unlucky")
            self.assertEqual(errors["r17"], "rejected by hand")
            self.assertTrue(errors["r19"].startswith("ArrowInvalid: column 'len' (int32) cannot hold 'nineteen'")
                            or "column 'len' (int32) cannot hold 'nineteen'" in errors["r19"], errors["r19"])
            self.assertIn("'bogus'", errors["r23"])
            self.assertEqual(len(errors), 4)
            table = result.table()
            ids = table.column("id").to_pylist()
            self.assertEqual(len(ids), 30 - 3 - 4)  # r0, r10, r20 dropped; 4 errors
            for bad in ("r0", "r10", "r13", "r17", "r19", "r20", "r23"):
                self.assertNotIn(bad, ids)
            row = table.to_pylist()[0]
            self.assertEqual(row, {"id": "r1", "text": "text 1", "n": 1, "upper": "TEXT 1", "len": 6})
            self.assertTrue(table.schema.field("id").nullable is False)  # untouched columns keep their field
            bye = p.end()
            self.assertEqual(bye.type, "bye")
            self.assertEqual(bye.table().to_pylist(), [{"id": "summary", "text": "rows seen", "n": 30, "upper": None, "len": None}])
            self.assertEqual(p.wait(), 0)
            self.assertIn("setup for stage feat", p.stderr)
            self.assertIn("row r5", p.stderr)  # print went to stderr

    def test_rejecting_an_unknown_id_fails_the_batch(self):
        st = pipe_plugin.stage(lambda b, ctx: ctx.reject("nope", "x") or b)
        with contextlib.redirect_stderr(io.StringIO()) as err:
            run = st.run_local(rows_batch(0, 3))
        self.assertIn("ValueError: ctx.reject('nope')", err.getvalue())
        self.assertEqual(len(run.failed), 1)
        self.assertIn("no row with this id", run.failed[0]["message"])

    def test_reorder_and_widen(self):
        with plugin(os.path.join(TEST_PLUGINS, "reorder.py")) as p:
            answer = p.describe(SCHEMA)
            self.assertEqual(answer.schema.names, ["id", "n2", "text"])
            result = p.batch(0, rows_batch(0, 5))
            self.assertTrue(result.schema.equals(answer.schema))
            self.assertEqual(result.table().column("n2").to_pylist(), [0, 2, 4, 6, 8])
            p.end()
            self.assertEqual(p.wait(), 0)
            self.assertEqual(p.stderr, "")

    def test_inference_failure_is_a_describe_error(self):
        with plugin(os.path.join(TEST_PLUGINS, "infer_fails.py")) as p:
            answer = p.describe(SCHEMA)
            self.assertEqual(answer.type, "error")
            self.assertIn("could not infer the output schema", answer.header["message"])
            self.assertIn("IndexError", answer.header["message"])
            self.assertIn("adds=", answer.header["hint"])
            failed = p.batch(0, rows_batch(0, 2))  # if pipe sent one anyway
            self.assertEqual(failed.type, "failed")
            p.end()
            self.assertEqual(p.wait(), 0)

    def test_finish_rows_arrive_with_bye(self):
        with plugin(os.path.join(TEST_PLUGINS, "expand_finish.py")) as p:
            answer = p.describe(SCHEMA)
            self.assertTrue(answer.schema.equals(SCHEMA))
            for seq in range(3):
                self.assertEqual(p.batch(seq, rows_batch(seq * 10, 10)).table().num_rows, 1)
            bye = p.end()
            self.assertEqual(bye.table().column("id").to_pylist(), ["held-0", "held-1", "held-2"])
            self.assertEqual(p.wait(), 0)

    def test_params_helpers(self):
        spec = {"a": 1, "b": pipe_plugin.Param(0.5), "c": pipe_plugin.Param(type=list, items=str), "d": pipe_plugin.Param("x", choices=["x", "y"])}
        self.assertEqual(pipe_plugin.check_params({"c": ["q"], "b": 2}, spec), {"a": 1, "b": 2.0, "c": ["q"], "d": "x"})
        for params, key, text in [
            ({}, "c", "is required"),
            ({"c": ["q"], "a": True}, "a", "a must be an integer, got true (a boolean)"),
            ({"c": ["q"], "a": 1.5}, "a", "a must be an integer"),
            ({"c": ["q", 3]}, "c", "c[1] must be a string, got 3"),
            ({"c": [], "d": "z"}, "d", 'must be one of "x", "y", got "z"'),
            ({"c": [], "e": 1}, "e", 'unknown param "e"'),
        ]:
            with self.assertRaises(pipe_plugin.ConfigError) as cm:
                pipe_plugin.check_params(params, spec)
            self.assertEqual(cm.exception.key, key)
            self.assertIn(text, cm.exception.message)
        with self.assertRaises(pipe_plugin.ConfigError) as cm:
            pipe_plugin.require_column(SCHEMA, "n", pipe_plugin.TEXT_TYPES, key="column")
        self.assertEqual(cm.exception.message, 'column "n" is int64, expected string or large_string or string_view')
        self.assertEqual(pipe_plugin.require_column(SCHEMA, "n", pa.types.is_integer).name, "n")

    def test_lossless_casts_only(self):
        w = pipe_plugin._widens
        self.assertTrue(w(pa.int32(), pa.int64()))
        self.assertTrue(w(pa.float32(), pa.float64()))
        self.assertTrue(w(pa.int32(), pa.float64()))
        self.assertTrue(w(pa.null(), pa.string()))
        self.assertFalse(w(pa.int64(), pa.float64()))
        self.assertFalse(w(pa.float32(), pa.int64()))
        self.assertFalse(w(pa.int64(), pa.int32()))
        self.assertFalse(w(pa.uint64(), pa.int64()))

    def test_prints_before_run_go_to_stderr(self):
        code = "print('early'); import pipe_plugin; print('after import')\n" \
               "st = pipe_plugin.stage(lambda b, ctx: b)\nst.run()\n"
        with Plugin([sys.executable, "-c", code]) as p:
            # 'early' was printed before the SDK could redirect: that is garbage, as documented
            first = p.recv()
            self.assertEqual(first.garbage, b"early\n")
            self.assertEqual(p.describe(SCHEMA).type, "schema")
            p.end()
            self.assertEqual(p.wait(), 0)
            self.assertIn("after import", p.stderr)

    def test_run_batches_reports_schema_mismatches(self):
        st = pipe_plugin.stage(adds={"x": pa.int64()})(lambda b, ctx: b.append_column("x", pa.array([0.5] * b.num_rows)))
        with self.assertRaises(pipe_plugin.PluginError), contextlib.redirect_stderr(io.StringIO()) as err:
            st.run_local(rows_batch(0, 3))
        self.assertIn("x: declared int64, got double", err.getvalue())


class ImageQuality(unittest.TestCase):
    PATH = os.path.join(EXAMPLES, "image_quality.py")
    ROOT = os.path.join(REPO, "examples", "digits", "data")

    def test_measures_and_rejects(self):
        from PIL import Image

        buf = io.BytesIO()
        Image.new("RGB", (40, 30), (255, 255, 255)).save(buf, format="JPEG")
        extra = {"white.jpg": buf.getvalue(), "broken.png": b"\x89PNG\r\n\x1a\n garbage", "empty.png": b""}
        batch = files_batch(DIGITS[:20], self.ROOT, extra)
        params = {"min_size": 16, "min_brightness": 0.24, "max_brightness": 0.4, "min_sharpness": 0.02}
        with plugin(self.PATH) as p:
            answer = p.describe(batch.schema, params)
            self.assertEqual(answer.type, "schema", answer.header)
            self.assertEqual(answer.schema.names[-6:], ["width", "height", "brightness", "contrast", "sharpness", "ok"])
            result = p.batch(0, batch)
            errors = {e["id"]: e["reason"] for e in result.header["errors"]}
            self.assertEqual(set(errors), {"broken.png", "empty.png"})
            self.assertTrue(all(r.startswith("cannot decode the image") for r in errors.values()))
            rows = {r["id"]: r for r in result.table().to_pylist()}
            self.assertEqual(len(rows), 21)
            white = rows["white.jpg"]
            self.assertEqual((white["width"], white["height"]), (40, 30))
            self.assertAlmostEqual(white["brightness"], 1.0, places=2)
            self.assertLess(white["contrast"], 0.01)
            self.assertLess(white["sharpness"], 1e-4)
            self.assertFalse(white["ok"])  # too bright, flat
            digit = rows["0001.png"]
            self.assertEqual((digit["width"], digit["height"]), (16, 16))
            self.assertTrue(digit["ok"])
            self.assertTrue(0.2 < digit["brightness"] < 0.4)
            p.end()
            self.assertEqual(p.wait(), 0)

    def test_config_errors(self):
        schema = files_batch([], "/").schema
        text_schema = texts_batch({}).schema
        for params, schema_, key, text in [
            ({"min_sise": 3}, schema, "min_sise", 'unknown param "min_sise"'),
            ({"min_brightness": "dark"}, schema, "min_brightness", "must be a number"),
            ({"column": "pixels"}, schema, "column", 'column "pixels" is not in the input'),
            ({}, text_schema, "column", 'column "content" is not in the input'),
            ({"column": "text"}, text_schema, "column", 'column "text" is string, expected binary'),
            ({"min_brightness": 0.8, "max_brightness": 0.2}, schema, "max_brightness", "below min_brightness"),
        ]:
            with plugin(self.PATH) as p:
                answer = p.describe(schema_, params)
                self.assertEqual(answer.type, "error", params)
                self.assertEqual(answer.header["key"], key, params)
                self.assertIn(text, answer.header["message"], params)


class KeywordScore(unittest.TestCase):
    PATH = os.path.join(EXAMPLES, "keyword_score.py")

    def test_scores(self):
        texts = {
            "a": "Noise, noise and more NOISE.",
            "b": "A key-value cache keeps the work.",
            "c": "nothing here",
            "d": None,
            "e": "",
        }
        params = {"keywords": ["noise", "key-value   cache", "work"], "weights": {"noise": 2.0}}
        with plugin(self.PATH) as p:
            batch = texts_batch(texts)
            answer = p.describe(batch.schema, params)
            self.assertEqual(answer.schema.names[-3:], ["keyword_hits", "keyword_score", "matched"])
            self.assertEqual([answer.schema.field(n).type for n in answer.schema.names[-3:]], [pa.int32(), pa.float64(), pa.string()])
            result = p.batch(0, batch)
            self.assertEqual(result.header["errors"], [{"id": "d", "reason": "ValueError: text is null"}])
            rows = {r["id"]: r for r in result.table().to_pylist()}
            self.assertEqual(rows["a"]["keyword_hits"], 3)
            self.assertAlmostEqual(rows["a"]["keyword_score"], 100.0 * 6 / 5)
            self.assertEqual(rows["a"]["matched"], "noise")
            self.assertEqual(rows["b"]["keyword_hits"], 2)
            self.assertEqual(rows["b"]["matched"], "key-value   cache,work")
            self.assertEqual((rows["c"]["keyword_hits"], rows["c"]["keyword_score"], rows["c"]["matched"]), (0, 0.0, ""))
            self.assertEqual(rows["e"]["keyword_score"], 0.0)
            p.end()
            self.assertEqual(p.wait(), 0)

    def test_case_sensitive(self):
        mod = load_module(self.PATH)
        run = mod.keyword_score.run_local([{"id": "x", "text": "Noise noise"}], {"keywords": ["Noise"], "case_sensitive": True})
        self.assertEqual(run.rows()[0]["keyword_hits"], 1)

    def test_config_errors(self):
        schema = texts_batch({}).schema
        for params, key, text in [
            ({}, "keywords", "is required"),
            ({"keywords": []}, "keywords", "non-empty list"),
            ({"keywords": "noise"}, "keywords", "must be a list"),
            ({"keywords": ["noise"], "weights": {"nois": 2}}, "weights", '"nois" is not one of the keywords'),
            ({"keywords": ["noise"], "weights": {"noise": "high"}}, "weights", "must be a number"),
            ({"keywords": ["noise"], "column": "content"}, "column", 'column "content" is not in the input'),
        ]:
            with plugin(self.PATH) as p:
                answer = p.describe(schema, params)
                self.assertEqual(answer.type, "error", params)
                self.assertEqual(answer.header["key"], key, params)
                self.assertIn(text, answer.header["message"], params)
                self.assertTrue(answer.header["hint"] or key == "column", params)

    def test_notes_in_process(self):
        mod = load_module(self.PATH)
        table = pa.table({"id": [os.path.basename(n) for n in NOTES], "text": [open(n).read() for n in NOTES]})
        run = mod.keyword_score.run_local(table, {"keywords": ["noise", "model"]}, batch_size=2)
        self.assertEqual(run.table.num_rows, len(NOTES))
        self.assertEqual(run.errors, [])
        hits = dict(zip(run.table.column("id").to_pylist(), run.table.column("keyword_hits").to_pylist()))
        self.assertEqual(hits["diffusion.txt"], 3)


class Cli(unittest.TestCase):
    def test_python_m_pipe_plugin(self):
        env = dict(os.environ, PYTHONPATH=SDK_DIR)
        env.pop("PIPE_PROTOCOL", None)
        out = subprocess.run(
            [sys.executable, "-m", "pipe_plugin", os.path.join(EXAMPLES, "keyword_score.py"),
             "--files", os.path.join(REPO, "examples", "text-stats", "data"), "--include", "**/*.txt",
             "--load", "text", "--params", '{"keywords": ["noise"]}'],
            capture_output=True, text=True, env=env, timeout=60,
        )
        self.assertEqual(out.returncode, 0, out.stdout + out.stderr)
        self.assertIn(f"{len(NOTES)} rows in, {len(NOTES)} out, 0 row errors", out.stdout)


def tensor_table(rows: int = 5, shuffle: bool = False) -> pa.Table:
    """A dataset with a tensor column (arrow.fixed_shape_tensor [2, 3]) and a number column."""
    import numpy as np

    ids = [f"r{i}" for i in range(rows)]
    order = list(reversed(range(rows))) if shuffle else list(range(rows))
    values = np.arange(rows * 6, dtype=np.float32).reshape(rows, 6)[order]
    image = pa.ExtensionArray.from_storage(
        pa.fixed_shape_tensor(pa.float32(), [2, 3]), pa.FixedSizeListArray.from_arrays(pa.array(values.ravel()), 6)
    )
    return pa.table({"id": [ids[i] for i in order], "x": [float(i) for i in order], "image": image})


class Trainer(unittest.TestCase):
    """pipe_plugin.trainer: a program for the train stage, run as pipe runs it (the PIPE_TRAIN_*
    environment, progress lines on stdout) and from the command line."""

    SCRIPT = os.path.join(TEST_PLUGINS, "tiny_trainer.py")

    def setUp(self):
        import tempfile

        self.tmp = tempfile.TemporaryDirectory()
        self.dir = self.tmp.name
        self.out = os.path.join(self.dir, "out")
        os.mkdir(self.out)

    def tearDown(self):
        self.tmp.cleanup()

    def under_pipe(self, params: dict, table: pa.Table | None = None, **env) -> subprocess.CompletedProcess:
        data = os.path.join(self.dir, "data.arrow")
        table = tensor_table() if table is None else table
        with pa.OSFile(data, "wb") as f, pa.ipc.new_file(f, table.schema) as w:
            w.write_table(table)
        with open(os.path.join(self.dir, "params.json"), "w") as f:
            json.dump(params, f)
        full = dict(os.environ, PYTHONPATH=SDK_DIR, PIPE_TRAIN_DATA=data, PIPE_TRAIN_PARAMS=os.path.join(self.dir, "params.json"),
                    PIPE_TRAIN_OUT=self.out, PIPE_TRAIN_SEED="42", PIPE_TRAIN_PROTOCOL="1", PIPE_STAGE="fit")
        full.pop("PIPE_PROTOCOL", None)
        full.update(env)
        return subprocess.run([sys.executable, self.SCRIPT], capture_output=True, text=True, env=full, timeout=60,
                              stdin=subprocess.DEVNULL)

    def local(self, *args: str) -> subprocess.CompletedProcess:
        env = dict(os.environ, PYTHONPATH=SDK_DIR)
        for k in [k for k in env if k.startswith("PIPE_")]:
            del env[k]
        return subprocess.run([sys.executable, self.SCRIPT, *args], capture_output=True, text=True, env=env, timeout=60)

    def model(self) -> dict:
        with open(os.path.join(self.out, "model.json")) as f:
            return json.load(f)

    def assert_progress(self, stdout: str, steps: int) -> None:
        lines = [json.loads(line) for line in stdout.splitlines()]
        self.assertEqual([(r["step"], r["total"]) for r in lines], [(i, 3) for i in range(1, steps + 1)], stdout)
        for r in lines:
            self.assertEqual(sorted(r), ["metrics", "step", "total"])
            self.assertEqual(sorted(r["metrics"]), ["loss", "noise"])
            self.assertTrue(all(isinstance(v, float) for v in r["metrics"].values()), r)

    def test_under_pipe_logs_steps_and_writes_the_output(self):
        out = self.under_pipe({"steps": 3, "note": "hi"})
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assert_progress(out.stdout, 3)  # nothing else on stdout
        losses = [json.loads(line)["metrics"]["loss"] for line in out.stdout.splitlines()]
        self.assertEqual(losses, sorted(losses, reverse=True))
        self.assertIn("hello from print", out.stderr)
        self.assertIn("raw write to fd 1", out.stderr)
        self.assertNotIn("pipe_plugin:", out.stderr)  # quiet when all is well
        model = self.model()
        self.assertEqual(model["rows"], 5)
        self.assertEqual(model["image_shape"], [5, 2, 3])
        self.assertEqual(model["image_dtype"], "float32")
        self.assertEqual(model["x_sum"], 10.0)
        self.assertEqual(model["seed"], 42)
        self.assertEqual(model["stage"], "fit")
        self.assertEqual(model["params"], {"steps": 3, "scale": 1.0, "fail": False, "skip_output": False, "note": "hi"})
        self.assertAlmostEqual(model["w"], 14.5 * 7 / 8, places=5)  # mean of 0..29, three halvings

    def test_an_exception_exits_1_with_the_message_on_stderr(self):
        out = self.under_pipe({"fail": True})
        self.assertEqual(out.returncode, 1)
        self.assert_progress(out.stdout, 2)  # the lines before the failure
        self.assertIn("Traceback (most recent call last)", out.stderr)
        self.assertEqual(out.stderr.strip().splitlines()[-1], "pipe_plugin: train() failed: RuntimeError: the loss went sideways")
        self.assertFalse(os.path.exists(os.path.join(self.out, "model.json")))

    def test_wrong_inputs_are_one_clear_line(self):
        for params, env, text in [
            ({}, {"PIPE_TRAIN_PROTOCOL": "2"}, "PIPE_TRAIN_PROTOCOL is '2': this trainer speaks train protocol 1"),
            ({}, {"PIPE_TRAIN_SEED": "x"}, "PIPE_TRAIN_SEED is 'x', not an integer"),
            ({"steps": "3"}, {}, 'pipe_plugin: params: steps: steps must be an integer, got "3" (a string)'),
            ({"step": 3}, {}, 'unknown param "step" (hint: did you mean "steps"?)'),
            ({"skip_output": True}, {}, "train() returned without writing model.json into"),
        ]:
            out = self.under_pipe(params, **env)
            self.assertEqual(out.returncode, 1, (params, env, out.stderr))
            self.assertIn(text, out.stderr)
            self.assertNotIn("Traceback", out.stderr)
        out = self.under_pipe({}, PIPE_TRAIN_DATA=os.path.join(self.dir, "nope.arrow"))
        self.assertEqual(out.returncode, 1)
        self.assertIn("cannot read the dataset PIPE_TRAIN_DATA=", out.stderr)

    def test_local_cli_reads_table_files(self):
        import pyarrow.csv as pcsv
        import pyarrow.parquet as pq

        table = tensor_table(shuffle=True)  # rows come back in id order, as from pipe
        pq.write_table(table, os.path.join(self.dir, "t.parquet"))
        with open(os.path.join(self.dir, "p.json"), "w") as f:
            f.write('{"scale": 2}')
        out = self.local("--data", os.path.join(self.dir, "t.parquet"), "--params", os.path.join(self.dir, "p.json"),
                         "--out", self.out, "--seed", "7")
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assert_progress(out.stdout, 3)
        self.assertIn("hello from print", out.stderr)
        self.assertIn("train() done in", out.stderr)
        model = self.model()
        self.assertEqual((model["seed"], model["params"]["scale"], model["stage"]), (7, 2.0, "train"))
        self.assertEqual(model["ids"], [f"r{i}" for i in range(5)])
        self.assertEqual(model["image_shape"], [5, 2, 3])
        self.assertAlmostEqual(model["w"], 29 * 7 / 8, places=5)

        # A .arrow file, inline params, a new output folder; a CSV without a tensor column is
        # read too (an id column is added) and fails in the trainer, cleanly.
        with pa.OSFile(os.path.join(self.dir, "t.arrow"), "wb") as f, pa.ipc.new_file(f, table.schema) as w:
            w.write_table(table)
        out = self.local("--data", os.path.join(self.dir, "t.arrow"), "--params", '{"steps": 1}', "--out", os.path.join(self.dir, "new"))
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertTrue(os.path.exists(os.path.join(self.dir, "new", "model.json")))
        pcsv.write_csv(pa.table({"x": [1.0, 2.0]}), os.path.join(self.dir, "t.csv"))
        out = self.local("--data", os.path.join(self.dir, "t.csv"), "--out", self.out)
        self.assertEqual(out.returncode, 1)
        self.assertIn("KeyError: \"no column 'image' in the dataset (it has: id, x)\"", out.stderr)
        with open(os.path.join(self.dir, "t.txt"), "w") as f:
            f.write("x\n1\n")
        out = self.local("--data", os.path.join(self.dir, "t.txt"), "--out", self.out)
        self.assertEqual(out.returncode, 1)
        self.assertIn("t.txt: expected .parquet/.pq, .csv", out.stderr)
        out = self.local("--data", os.path.join(self.dir, "none.csv"), "--out", self.out)
        self.assertEqual(out.returncode, 1)
        self.assertIn("none.csv: no such file", out.stderr)
        out = self.local("--out", self.out)
        self.assertEqual(out.returncode, 2)
        self.assertIn("--data", out.stderr)

    def test_in_process_and_numpy_conversion(self):
        import numpy as np

        seen = {}

        @pipe_plugin.trainer(outputs=["w.npy"])
        def fit(ctx):
            seen["code"] = ctx.column("code")
            seen["plain"] = ctx.arrays["plain"]
            ctx.log(step=1, total=1, loss=np.float64(0.5), acc=np.array(1.0))
            np.save(ctx.output("w.npy"), seen["code"].sum(axis=0))

        # A FixedSizeList that carries the tensor shape in its field metadata (as pipe writes a
        # tensor column when the extension type is not registered), and a plain one (1-D).
        meta = {"ARROW:extension:name": "arrow.fixed_shape_tensor", "ARROW:extension:metadata": '{"shape": [2, 2]}'}
        lists = pa.FixedSizeListArray.from_arrays(pa.array(np.arange(12, dtype=np.float32)), 4)
        schema = pa.schema([pa.field("id", pa.string()), pa.field("code", lists.type, metadata=meta), pa.field("plain", lists.type)])
        table = pa.Table.from_arrays([pa.array(["a", "b", "c"]), lists, lists], schema=schema)
        ctx = fit.run_local(table, out=os.path.join(self.dir, "o"))
        self.assertEqual(seen["code"].shape, (3, 2, 2))
        self.assertEqual(seen["plain"].shape, (3, 4))
        self.assertTrue(seen["code"].flags.writeable)
        self.assertEqual(ctx.logs, [{"step": 1, "total": 1, "metrics": {"loss": 0.5, "acc": 1.0}}])
        self.assertEqual(np.load(os.path.join(self.dir, "o", "w.npy")).tolist(), [[12, 15], [18, 21]])
        self.assertEqual(pipe_plugin.trainer.__module__, "pipe_plugin.trainer")
        with self.assertRaises(ValueError) as cm:
            ctx.output("other.bin")
        self.assertIn("not a declared output (outputs: w.npy)", str(cm.exception))
        for kwargs, error, text in [
            ({"step": 2, "loss": float("nan")}, ValueError, "ctx.log(step=2): metric 'loss' is nan; metrics must be finite numbers"),
            ({"step": 2, "loss": float("inf")}, ValueError, "metric 'loss' is inf"),
            ({"step": 2, "loss": "0.3"}, TypeError, "metric 'loss' must be a finite number, got '0.3' (str)"),
            ({"step": 2, "loss": np.ones(3)}, TypeError, "metric 'loss' must be one number, got a ndarray of shape [3]"),
            ({"step": 2.0}, TypeError, "step must be an integer, got 2.0 (float)"),
            ({"step": 2, "total": -1}, ValueError, "total must be >= 0"),
        ]:
            with self.assertRaises(error) as cm:
                ctx.log(**kwargs)
            self.assertIn(text, str(cm.exception))
        self.assertEqual(len(ctx.logs), 1)
        with self.assertRaises(pipe_plugin.PluginError) as cm:
            pipe_plugin.trainer(outputs=["w.npy"])(lambda ctx: None).run_local(table)
        self.assertIn("returned without writing w.npy", str(cm.exception))


class ExamplePipelines(unittest.TestCase):
    """The process stages of examples/python-plugins/*.toml, started as pipe would start them
    (cwd = the pipeline's folder, the stage's env), accept their params and handle the data the
    collect.files stage before them reads."""

    FOLDER = os.path.join(REPO, "examples", "python-plugins")

    def test_the_process_stages_run_on_their_data(self):
        import tomllib

        for name in ("pipeline.toml", "text.toml"):
            with open(os.path.join(self.FOLDER, name), "rb") as f:
                doc = tomllib.load(f)
            stages = doc["stage"]
            files = stages[0]
            self.assertEqual(files["uses"], "collect.files")
            root = os.path.normpath(os.path.join(self.FOLDER, files["path"]))
            paths = sorted(
                p for g in files["include"] for p in glob.glob(os.path.join(root, g), recursive=True)
            )
            self.assertTrue(paths, name)
            if files.get("load") == "text":
                batch = texts_batch({os.path.relpath(p, root): open(p).read() for p in paths})
            else:
                batch = files_batch(paths, root)
            procs = [s for s in stages if s["uses"] == "process"]
            self.assertTrue(procs, name)
            for st in procs:
                self.assertEqual(st["command"][0], "python3")
                argv = [sys.executable, *st["command"][1:]]  # this Python has the packages
                with Plugin(argv, stage=st["id"], cwd=self.FOLDER, env=st.get("env", {})) as p:
                    answer = p.describe(batch.schema, st.get("params", {}))
                    self.assertEqual(answer.type, "schema", (name, answer.header, p.stderr))
                    result = p.batch(0, batch)
                    self.assertEqual(result.type, "result", (name, result.header))
                    self.assertNotIn("errors", result.header)
                    table = result.table()
                    self.assertEqual(table.num_rows, batch.num_rows)
                    if "ok" in table.column_names:
                        kept = sum(table.column("ok").to_pylist())
                        self.assertTrue(0.9 * batch.num_rows < kept < batch.num_rows, kept)
                    p.end()
                    self.assertEqual(p.wait(), 0)


if __name__ == "__main__":
    unittest.main(verbosity=2)
