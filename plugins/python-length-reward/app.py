"""Length / repetition reward for rwkvtune, as a WebAssembly component (componentize-py).

    reward = max(0, 1 - |length - target| / target) - repetition_weight * repeated

- length: the completion's length in `unit`s: "tokens" (the run's tokenizer; the ids the host
  passes, no re-tokenising), "words" (whitespace-separated) or "chars" (code points);
- target: `target` from the config, or per row from the dataset column named by `column`
  (default "target_length") when that row has it;
- repeated: the fraction of `ngram`-grams that already occurred earlier in the completion, over
  token ids for unit "tokens" and over lower-cased words otherwise (0 when there are fewer
  than `ngram` units).

So a completion of exactly the target length without loops scores 1.0, one of twice (or zero
times) the target scores 0.0, and degenerate repetition pulls the score below 0.

Config (JSON, all optional): {"target": 256, "unit": "tokens", "ngram": 4,
"repetition_weight": 1.0, "column": "target_length"}
"""

import json
from itertools import compress

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import host
from wit_world.imports.types import LogLevel, PluginInfo, RewardBatch

UNITS = ("tokens", "words", "chars")

_cfg = {
    "target": 256.0,
    "unit": "tokens",
    "ngram": 4,
    "repetition_weight": 1.0,
    "column": "target_length",
}


def _number(cfg, key, minimum):
    value = cfg.get(key, _cfg[key])
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < minimum:
        raise Err(f"config `{key}` must be a number >= {minimum}")
    return value


def _repeated(units, n):
    # n-grams built and counted in C (zip/set): the repeats are the n-grams minus the distinct ones.
    grams = list(zip(*(units[k:] for k in range(n))))
    if not grams:
        return 0.0
    return (len(grams) - len(set(grams))) / len(grams)


def _row_ids(ids, mask, cols, i):
    start = i * cols
    return list(compress(ids[start : start + cols], mask[start : start + cols]))


class Reward(exports.Reward):
    def init(self, config: str) -> PluginInfo:
        try:
            cfg = json.loads(config)
        except ValueError as e:
            raise Err(f"bad config JSON: {e}")
        if not isinstance(cfg, dict):
            raise Err("config must be a JSON object")
        unit = cfg.get("unit", "tokens")
        if unit not in UNITS:
            raise Err(f"config `unit` must be one of {', '.join(UNITS)}")
        column = cfg.get("column", "target_length")
        if not isinstance(column, str):
            raise Err("config `column` must be a string")
        _cfg.update(
            target=float(_number(cfg, "target", 1)),
            unit=unit,
            ngram=int(_number(cfg, "ngram", 1)),
            repetition_weight=float(_number(cfg, "repetition_weight", 0)),
            column=column,
        )
        host.log(LogLevel.DEBUG, f"python-length-reward config: {_cfg}")
        return PluginInfo(
            name="python-length-reward",
            version="0.1.0",
            description="closeness to a target length minus a repeated n-gram penalty",
        )

    def compute_rewards(self, batch: RewardBatch) -> list:
        unit, n, weight = _cfg["unit"], _cfg["ngram"], _cfg["repetition_weight"]
        column = _cfg["column"]
        needle = json.dumps(column)
        ids, mask, cols = batch.tokens.ids, batch.tokens.mask, batch.tokens.cols
        out = []
        for i, text in enumerate(batch.completions):
            target = _cfg["target"]
            extra = batch.extras[i]
            if needle in extra:  # cheap pre-check: most rows carry no per-row target
                try:
                    row = json.loads(extra)
                except ValueError as e:
                    raise Err(f"row {i}: extras are not JSON: {e}")
                value = row.get(column) if isinstance(row, dict) else None
                if value is not None:
                    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 1:
                        raise Err(f"row {i}: column `{column}` must be a number >= 1")
                    target = float(value)
            if unit == "tokens":
                units = _row_ids(ids, mask, cols, i)
                length = len(units)
            else:
                units = text.lower().split()
                length = len(units) if unit == "words" else len(text)
            score = max(0.0, 1.0 - abs(length - target) / target)
            out.append(score - weight * _repeated(units, n))
        return out
