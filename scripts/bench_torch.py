#!/usr/bin/env python3
"""PyTorch twin of `e2llm bench train`: the same Llama (HF transformers' LlamaForCausalLM with the
quickstart base config), the same batch (8 x 256 tokens), the same optimizer (AdamW, beta 0.9/0.95,
weight decay 0.1, grad clip 1.0), eager mode, for the same number of timed steps after the same
warm-up. Prints a table and writes JSON, so the two tokens/s can be divided on one machine.

Not run in CI (it needs torch + transformers). Usage:
    python3 scripts/bench_torch.py [--device cpu|cuda] [--threads N] [--steps 20] [--json OUT]
The config must match `e2llm train --print-config` (hidden 128, 4 layers, 4 heads, MLP 344,
vocab 1024, L = R = 256, batch 8); `--hidden/--layers/--batch/--seq` change it.
"""
import argparse
import json
import platform
import time


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--intermediate", type=int, default=344)
    ap.add_argument("--vocab", type=int, default=1024)
    ap.add_argument("--json")
    a = ap.parse_args()

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if a.threads > 0:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=a.vocab,
        hidden_size=a.hidden,
        intermediate_size=a.intermediate,
        num_hidden_layers=a.layers,
        num_attention_heads=a.heads,
        num_key_value_heads=a.heads,
        max_position_embeddings=a.seq,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        attn_implementation="eager",
    )
    model = LlamaForCausalLM(cfg).to(a.device)
    model.train()
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    rest = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
        lr=2e-3, betas=(0.9, 0.95), eps=1e-8,
    )
    gen = torch.Generator().manual_seed(0)

    def step():
        ids = torch.randint(0, a.vocab, (a.batch, a.seq + 1), generator=gen).to(a.device)
        out = model(input_ids=ids[:, :-1], labels=None)
        loss = torch.nn.functional.cross_entropy(
            out.logits.reshape(-1, a.vocab).float(), ids[:, 1:].reshape(-1)
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss

    for _ in range(a.warmup):
        step()
    if a.device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(a.steps):
        loss = step()
    loss = float(loss.detach())
    if a.device.startswith("cuda"):
        torch.cuda.synchronize()
    secs = time.perf_counter() - t0
    tokens = a.steps * a.batch * a.seq
    params = sum(p.numel() for p in model.parameters())
    dev = torch.cuda.get_device_name() if a.device.startswith("cuda") else platform.processor() or "cpu"
    row = {
        "framework": f"torch {torch.__version__} eager",
        "device": dev,
        "threads": torch.get_num_threads(),
        "steps": a.steps,
        "tokens_per_step": a.batch * a.seq,
        "seconds": secs,
        "tokens_per_s": tokens / secs,
        "ms_per_step": 1e3 * secs / a.steps,
        "final_loss": loss,
        "params": params,
    }
    print("| framework | device | threads | ms/step | tokens/s |\n|---|---|---:|---:|---:|")
    print(f"| {row['framework']} | {dev} | {row['threads']} | {row['ms_per_step']:.1f} | {row['tokens_per_s']:.0f} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(row, f, indent=2)


if __name__ == "__main__":
    main()
