"""The generation benchmark's inputs and outputs, shared by its Python programs: the prompts file
(JSONL of `id` and `prompt_ids`) read in file order and cut into batches, the sequences written
the way pipe's sink.table writes them (JSONL of `id` and `tokens`: prompt and new tokens), and the
one-line JSON timing report each program prints on stderr."""
import json
import sys


def read_prompts(path):
    """[(id, [token ids])] in file order."""
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [(r["id"], [int(t) for t in r["prompt_ids"]]) for r in rows]


def batches(rows, size):
    """`rows` cut into consecutive batches of `size` (the last may be shorter)."""
    return [rows[i:i + size] for i in range(0, len(rows), size)]


def write_sequences(path, ids, sequences):
    """One line per row: its id and its whole sequence (prompt and new tokens)."""
    if not path:
        return
    with open(path, "w") as f:
        for i, seq in zip(ids, sequences):
            f.write(json.dumps({"id": i, "tokens": [int(t) for t in seq]}) + "\n")


def report(program, **figures):
    """The program's own figures (seconds inside the process, counts) as one JSON line on stderr."""
    print(json.dumps({"program": program, **figures}), file=sys.stderr)
