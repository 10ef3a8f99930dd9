"""Write the text corpus of examples/train-gpt: stories from tiny-gpt's grammar, as text files.

``corpus/stories-NN.txt``: ``--files`` files of ``--per-file`` stories each, one story per
paragraph (stories are separated by a blank line), the first ``files * per_file`` stories that
``examples/models/tiny-gpt/stories.py`` writes for ``--seed``. The grammar is the project's own
code, so the text is the project's (MIT). The committed corpus was made with the defaults:

    .pipe/venv/bin/python examples/train-gpt/make_corpus.py

(standard library only; 8 files of 100 stories, about 310 KB).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "models" / "tiny-gpt"))
import stories  # noqa: E402  (examples/models/tiny-gpt/stories.py)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--per-file", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=HERE / "corpus",
                        help="folder to write (default: %(default)s)")
    args = parser.parse_args()
    texts = stories.stories(args.files * args.per_file, args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    for f in range(args.files):
        part = texts[f * args.per_file: (f + 1) * args.per_file]
        (args.out / f"stories-{f:02d}.txt").write_text("\n\n".join(part) + "\n")
    print(f"wrote {len(texts)} stories ({sum(map(len, texts)):,} characters) in {args.files} files "
          f"to {args.out}")


if __name__ == "__main__":
    main()
