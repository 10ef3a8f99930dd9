"""keyword_score: scores texts by how often they use given keywords.

For the text in `column`, adds:

  keyword_hits   Int32    occurrences of the keywords (whole words or phrases)
  keyword_score  Float64  weighted hits per 100 words
  matched        Utf8     the keywords found, comma-joined, in the order of `keywords`
                          ("" when none)

A null text is a per-row error (the stage's `on_error` decides).

params:
  keywords        (required) a non-empty list of words or phrases
  column          "text"     the Utf8 column to read
  weights         {}         keyword -> weight (default 1.0 for each keyword)
  case_sensitive  false
"""

import json
import re

import pyarrow as pa

from pipe_plugin import TEXT_TYPES, ConfigError, Param, require_column, stage

PARAMS = {
    "keywords": Param(type=list, items=str, example='["noise", "token"]', doc="words or phrases to count"),
    "column": Param("text", doc="the text column"),
    "weights": Param({}, items=float, example="{ noise = 2.0 }", doc="keyword -> weight (default 1.0)"),
    "case_sensitive": Param(False),
}

WORD = re.compile(r"\w+")


@stage(
    rows=True,
    adds={"keyword_hits": pa.int32(), "keyword_score": pa.float64(), "matched": pa.string()},
    params=PARAMS,
)
def keyword_score(row, ctx):
    text = row[ctx.params["column"]]
    if text is None:
        raise ValueError(f"{ctx.params['column']} is null")
    s = ctx.state
    hits = 0
    score = 0.0
    found = set()
    for m in s["pattern"].finditer(text):
        word = s["norm"](m.group(0))
        hits += 1
        score += s["weights"][word]
        found.add(word)
    words = len(WORD.findall(text))
    return {
        "keyword_hits": hits,
        "keyword_score": 100.0 * score / words if words else 0.0,
        "matched": ",".join(k for k in s["keywords"] if s["norm"](k) in found),
    }


@keyword_score.check
def check(params, input_schema):
    require_column(input_schema, params["column"], TEXT_TYPES, key="column")
    keywords = params["keywords"]
    if not keywords or any(not k.strip() for k in keywords):
        raise ConfigError("keywords", "must be a non-empty list of non-empty strings", 'keywords = ["noise", "token"]')
    fold = (lambda k: k) if params["case_sensitive"] else str.casefold
    known = {fold(k) for k in keywords}
    for word, weight in params["weights"].items():
        if fold(word) not in known:
            hint = "keywords = [" + ", ".join(json.dumps(k) for k in keywords + [word]) + "]"
            raise ConfigError("weights", f'"{word}" is not one of the keywords', hint)


@keyword_score.setup
def setup(ctx):
    p = ctx.params
    norm = (lambda k: " ".join(k.split())) if p["case_sensitive"] else (lambda k: " ".join(k.split()).casefold())
    keywords = p["keywords"]
    # Longest first, so "neural network" wins over "network"; spaces match any whitespace.
    alternatives = sorted({norm(k) for k in keywords}, key=len, reverse=True)
    body = "|".join(r"\s+".join(map(re.escape, k.split())) for k in alternatives)
    flags = 0 if p["case_sensitive"] else re.IGNORECASE
    ctx.state["pattern"] = re.compile(rf"(?<!\w)(?:{body})(?!\w)", flags)
    ctx.state["norm"] = norm
    ctx.state["keywords"] = list({norm(k): k for k in reversed(keywords)}.values())[::-1]  # first spelling wins
    weights = {norm(k): 1.0 for k in keywords}
    weights.update({norm(k): w for k, w in p["weights"].items()})
    ctx.state["weights"] = weights


if __name__ == "__main__":
    keyword_score.run()
