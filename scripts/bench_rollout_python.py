#!/usr/bin/env python3
"""Batched rollout decoding speed of the official `rwkv` pip package on CPU, for scripts/bench-rollout.

Benchmark-only helper: run it with the full-torch venv (.venv-pytorch) that has `rwkv==0.8.32`
installed. It is not part of the product or its tests.

What it does, per batch size B (the same workload as `rwkvtune bench --rollout`):
  * loads the official `.pth` with `rwkv.model.RWKV(path_without_pth, strategy="cpu fp32")`
    (environment RWKV_V7_ON=1, RWKV_JIT_ON=1, RWKV_CUDA_ON=0, set before the import);
  * B random prompts of P token ids in [1, V), each prefilled on its own (`model.forward(list,
    None)`; timed separately, not part of the decode rate);
  * then N decode iterations: sample one token per row from softmax(logits) (temperature 1, top-p
    1: one `torch.multinomial` over the stacked [B, V] probabilities, seeded), and, except after
    the last, one forward per row. Like ours, that is N samplings and N-1 forwards per row, and
    B*N decoded tokens; decode tokens/s = B*N / the wall time of that loop.
  * Batching: `RWKV_x070` (the v7 class of rwkv 0.8.x) has no batched forward - `forward_one`
    takes one `idx: int` and an unbatched state - so the rows are stepped one after the other
    inside each iteration, which is what a user of the package has to do. The script checks the
    installed class for a `forward_batch` method and says which path it took ("decode_path").
  * the sampler is deliberately the cheap batched one (not `PIPELINE.sample_logits`, which
    sorts the whole vocabulary in numpy for every row even at top-p 1), so this baseline is a
    generous one.
  * one warm-up run per batch size, then --repeat timed runs; the best run is reported (and the
    median), with the forward and sampling parts of its decode time.
"""

import argparse
import json
import os
import random
import statistics
import sys
import time


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True,
                   help="official .pth file, the path without .pth, or a directory with model.pth")
    p.add_argument("--batches", default="1,8,64")
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--prompt-len", type=int, default=16)
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--repeat", type=int, default=3, help="timed runs per batch size (after 1 warm-up)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--jit", type=int, default=1, choices=[0, 1], help="RWKV_JIT_ON")
    p.add_argument("--result", help="write the JSON result here")
    a = p.parse_args()

    os.environ["RWKV_V7_ON"] = "1"
    os.environ["RWKV_JIT_ON"] = str(a.jit)
    os.environ["RWKV_CUDA_ON"] = "0"
    import torch
    torch.set_num_threads(a.threads)
    import importlib.metadata
    import rwkv.model
    from rwkv.model import RWKV

    path = a.model
    if os.path.isdir(path):
        path = os.path.join(path, "model.pth")
    if path.endswith(".pth"):
        path = path[:-4]
    model = RWKV(model=path, strategy="cpu fp32")
    vocab = model.args.vocab_size

    batched = hasattr(model, "forward_batch")
    decode_path = ("batched forward_batch" if batched else
                   "one forward_one per row per step (RWKV_x070 has no batched forward)")
    if batched:
        # Not in rwkv 0.8.32; if a later version adds one, wire it in here before trusting numbers.
        sys.exit("bench_rollout_python: this rwkv has forward_batch; the script only implements the "
                 "per-row loop - update it")

    batches = [int(b) for b in a.batches.split(",") if b.strip()]
    n, plen = a.new_tokens, a.prompt_len
    gen = torch.Generator().manual_seed(a.seed)

    def one_run(prompts):
        t0 = time.perf_counter()
        states, logits = [], []
        for pr in prompts:
            out, st = model.forward(pr, None)
            states.append(st)
            logits.append(out)
        prefill = time.perf_counter() - t0
        toks = [[] for _ in prompts]
        sample_secs = 0.0
        t1 = time.perf_counter()
        for step in range(n):
            ts = time.perf_counter()
            probs = torch.softmax(torch.stack(logits).float(), dim=-1)
            nxt = torch.multinomial(probs, 1, generator=gen).view(-1).tolist()
            sample_secs += time.perf_counter() - ts
            for j, t in enumerate(nxt):
                toks[j].append(t)
            if step + 1 < n:
                for j, t in enumerate(nxt):
                    logits[j], states[j] = model.forward(t, states[j])
        decode = time.perf_counter() - t1
        assert sum(len(t) for t in toks) == len(prompts) * n
        return {"prefill_secs": prefill, "decode_secs": decode, "sample_secs": sample_secs,
                "decode_tokens": len(prompts) * n}

    results = []
    for b in batches:
        rng = random.Random(a.seed ^ b)
        prompts = [[rng.randrange(1, vocab) for _ in range(plen)] for _ in range(b)]
        with torch.no_grad():
            one_run(prompts)  # warm-up (also the TorchScript profiling runs)
            runs = [one_run(prompts) for _ in range(max(1, a.repeat))]
        tps = [r["decode_tokens"] / r["decode_secs"] for r in runs]
        best = runs[max(range(len(runs)), key=lambda i: tps[i])]
        r = dict(best)
        r.update(batch=b, forward_secs=best["decode_secs"] - best["sample_secs"],
                 forward_steps=n - 1, tokens_per_sec=max(tps),
                 tokens_per_sec_median=statistics.median(tps), tokens_per_sec_runs=tps)
        results.append(r)
        print("official rwkv decode B=%-4d %10.1f tokens/s (median %.1f); decode %.1f ms = forward "
              "%.1f ms (%d steps x %d rows) + sampling %.1f ms (%.0f%%); prefill %.1f ms"
              % (b, r["tokens_per_sec"], r["tokens_per_sec_median"], r["decode_secs"] * 1e3,
                 r["forward_secs"] * 1e3, n - 1, b, r["sample_secs"] * 1e3,
                 100.0 * r["sample_secs"] / r["decode_secs"], r["prefill_secs"] * 1e3), flush=True)

    out = {"tool": "rwkv %s (official pip package)" % importlib.metadata.version("rwkv"),
           "torch": torch.__version__, "model": a.model, "strategy": "cpu fp32",
           "jit": a.jit, "threads": torch.get_num_threads(), "prompt_len": plen, "new_tokens": n,
           "repeat": max(1, a.repeat), "seed": a.seed, "decode_path": decode_path,
           "sampler": "torch.softmax + torch.multinomial over the stacked [B, V] logits",
           "results": results}
    print("decode path: %s" % decode_path)
    if a.result:
        with open(a.result, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
