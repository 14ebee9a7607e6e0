#!/usr/bin/env python3
"""SFT throughput of the Python rwkvtune 0.1.0 (PyPI) on CPU, for scripts/bench-sft.

Benchmark-only helper: run it with the full-torch venv (.venv-pytorch) that has `rwkvtune==0.1.0`
installed. It is not part of the product or its tests.

What it does:
  * reads the same pre-tokenized JSONL rows (`input_ids`/`labels`, exactly ctx tokens) that our CLI
    trains on and turns them into a `datasets.Dataset` (`Dataset.from_list`);
  * builds `rwkvtune.SFTTrainer(model=<AutoModel.from_pretrained(dir)>, args=SFTConfig(
    accelerator="cpu", precision="fp32", devices=1, micro_bsz, ctx_len, epoch_count=1,
    epoch_steps=S, grad_cp=0, accumulate_grad_batches=1, save_every_n_batches=0, ...),
    train_dataset=..., processing_class=RWKVTokenizer())` and calls `trainer.train()`;
  * times every micro-batch (= optimizer step, accumulate 1) with a Lightning callback: the
    wall-clock instant of each `on_train_batch_end`. A step's time runs from the previous step's
    end to its own end (data loading, forward, backward, clipping, optimizer step, logging) -
    the same definition our CLI uses for `tokens_per_sec` in loss_data.jsonl. Throughput =
    tokens of steps warmup+1..S / (t_end[S] - t_end[warmup]); model loading, Lightning set-up
    and the end-of-epoch checkpoint the tool writes after the last step are excluded.
  * writes a JSON result (tokens/s, per-step seconds, VmHWM at the end of the last timed step).

Workarounds applied to rwkvtune 0.1.0: none are needed for this path (SFT, normal mode, CPU,
fp32, grad_cp=0). Two things are passed explicitly rather than patched:
  * the model is passed as an nn.Module loaded with `AutoModel.from_pretrained(dir)` rather than
    as the path string: given a path, SFTTrainer also calls `AutoTokenizer.from_pretrained(dir)`,
    which raises FileNotFoundError ("Vocabulary file not found") because the reference model
    directory holds only config.json + model.pth;
  * so `processing_class=RWKVTokenizer(vocab_file=get_vocab_path())` - the package's own bundled
    world vocabulary - is passed instead. SFTTrainer never tokenizes SFT data; it only copies the
    tokenizer into the checkpoints it writes.
"""

import argparse
import json
import os
import sys
import time


def vm_hwm_mib():
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True, help="JSONL with input_ids/labels rows")
    p.add_argument("--ctx", type=int, required=True)
    p.add_argument("--bsz", type=int, default=2)
    p.add_argument("--steps", type=int, required=True, help="total optimizer steps (warm-up included)")
    p.add_argument("--warmup", type=int, default=2, help="steps excluded from the timing")
    p.add_argument("--threads", type=int, required=True)
    p.add_argument("--proj-dir", required=True)
    p.add_argument("--result", required=True, help="where to write the JSON result")
    a = p.parse_args()

    import torch

    torch.set_num_threads(a.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass

    from datasets import Dataset
    from lightning.pytorch.callbacks import Callback

    import rwkvtune
    from rwkvtune import AutoModel
    from rwkvtune.training import SFTConfig, SFTTrainer
    from rwkvtune.data.tokenizers import RWKVTokenizer, get_vocab_path

    rows = []
    with open(a.data) as f:
        for line in f:
            line = line.strip()
            if line:
                r = json.loads(line)
                rows.append({"input_ids": r["input_ids"], "labels": r["labels"]})
    need = a.steps * a.bsz
    if len(rows) < need:
        sys.exit(f"bench_sft_python: {a.data} has {len(rows)} rows, need {need}")
    dataset = Dataset.from_list(rows)

    config = SFTConfig(
        accelerator="cpu",
        precision="fp32",
        devices=1,
        strategy="auto",
        micro_bsz=a.bsz,
        ctx_len=a.ctx,
        epoch_count=1,
        epoch_steps=a.steps,
        epoch_save=1,  # 0.1.0 always saves after the last epoch anyway; excluded from timing
        save_every_n_batches=0,
        accumulate_grad_batches=1,
        grad_cp=0,
        grad_clip=1.0,
        lr_init=1e-5,
        lr_final=1e-5,
        warmup_steps=0,
        dataloader_shuffle=False,
        num_workers=0,
        proj_dir=a.proj_dir,
        report_to="",
        seed=42,
    )

    model = AutoModel.from_pretrained(a.model, device="cpu")
    tokenizer = RWKVTokenizer(vocab_file=get_vocab_path())
    trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer)

    ends = []
    hwm_at_last_step = [None]

    class StepTimer(Callback):
        def on_train_batch_end(self, trainer_, pl_module, outputs, batch, batch_idx):
            ends.append(time.perf_counter())
            if len(ends) == a.steps:
                hwm_at_last_step[0] = vm_hwm_mib()

        def on_train_start(self, trainer_, pl_module):
            ends.clear()
            self.start = time.perf_counter()
            ends_start[0] = self.start

    ends_start = [None]
    trainer.trainer.callbacks.append(StepTimer())

    t0 = time.perf_counter()
    trainer.train()
    t_fit = time.perf_counter() - t0

    if len(ends) < a.steps:
        sys.exit(f"bench_sft_python: only {len(ends)} of {a.steps} steps ran")
    tokens_per_step = a.ctx * a.bsz
    step_secs = [ends[0] - ends_start[0]] + [ends[i] - ends[i - 1] for i in range(1, len(ends))]
    timed = a.steps - a.warmup
    secs = ends[a.steps - 1] - ends[a.warmup - 1] if a.warmup > 0 else ends[a.steps - 1] - ends_start[0]
    res = {
        "tool": "python-rwkvtune-%s" % getattr(rwkvtune, "__version__", "?"),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "ctx": a.ctx,
        "bsz": a.bsz,
        "steps": a.steps,
        "warmup": a.warmup,
        "timed_steps": timed,
        "timed_tokens": timed * tokens_per_step,
        "timed_secs": secs,
        "tokens_per_sec": timed * tokens_per_step / secs,
        "step_secs": step_secs,
        "fit_secs_incl_setup_and_save": t_fit,
        "vm_hwm_mib_at_last_step": hwm_at_last_step[0],
    }
    with open(a.result, "w") as f:
        json.dump(res, f, indent=1)
    print("bench_sft_python: %.1f tokens/s over %d steps (%.2f s)" % (res["tokens_per_sec"], timed, secs))


if __name__ == "__main__":
    main()
