#!/usr/bin/env python3
"""PyTorch peer of `e2llm bench kernels`: causal attention of the same shapes through
`torch.nn.functional.scaled_dot_product_attention` (torch picks its fastest kernel for the dtype:
memory-efficient attention for f32, FlashAttention for bf16 on a recent NVIDIA GPU), forward and
forward + backward, timed the same way (one untimed warm-up, then the mean of --reps, each ending
in a sum read back to the host). e2llm's kernels are f32, so the f32 column is the like-for-like
one; bf16 shows what tensor cores add.

Not run in CI (it needs torch). Usage:
    python3 scripts/bench_attention_torch.py [--device cuda] [--heads 4 --kv-heads 4 --head-dim 32]
        [--lengths 512,1024,4096] [--reps 3] [--dtypes float32,bfloat16] [--json OUT]
"""
import argparse
import json
import platform
import time


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--head-dim", type=int, default=32)
    ap.add_argument("--lengths", default="512,1024,2048,4096")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--json")
    a = ap.parse_args()

    import torch
    import torch.nn.functional as F

    dev = torch.device(a.device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor()
    if a.heads % a.kv_heads:
        raise SystemExit("--heads must be a multiple of --kv-heads")

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    def timed(f):
        f()
        sync()
        t0 = time.perf_counter()
        for _ in range(a.reps):
            f()
        sync()
        return 1e3 * (time.perf_counter() - t0) / a.reps

    print(f"torch {torch.__version__}, {name}; {a.heads} query / {a.kv_heads} kv heads of {a.head_dim}, causal; {a.reps} timed reps\n")
    print("| length | dtype | fwd ms | fwd+bwd ms |\n|---:|---|---:|---:|")
    rows = []
    for s in [int(x) for x in a.lengths.split(",")]:
        for dt in a.dtypes.split(","):
            dtype = getattr(torch, dt)
            g = torch.Generator(device=dev).manual_seed(0)
            mk = lambda h: torch.rand(1, h, s, a.head_dim, device=dev, dtype=dtype, generator=g) * 2 - 1
            q, k, v = mk(a.heads), mk(a.kv_heads), mk(a.kv_heads)
            gqa = a.heads != a.kv_heads
            row = {"length": s, "dtype": dt}
            try:
                fwd = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa).sum().item()
                row["fwd_ms"] = timed(fwd)
                qg, kg, vg = (t.clone().requires_grad_() for t in (q, k, v))
                do = torch.rand_like(q)

                def fwd_bwd():
                    o = F.scaled_dot_product_attention(qg, kg, vg, is_causal=True, enable_gqa=gqa)
                    dq, dk, dv = torch.autograd.grad(o, (qg, kg, vg), do)
                    return (dq.sum() + dk.sum() + dv.sum()).item()

                row["fwd_bwd_ms"] = timed(fwd_bwd)
            except torch.OutOfMemoryError as e:
                row["failed"] = "out of memory"
                torch.cuda.empty_cache()
            print(f"| {s} | {dt} | {row.get('fwd_ms', float('nan')):.2f} | {row.get('fwd_bwd_ms', float('nan')):.2f} |")
            rows.append(row)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"torch": torch.__version__, "device": name, "heads": a.heads, "kv_heads": a.kv_heads,
                       "head_dim": a.head_dim, "reps": a.reps, "results": rows}, f, indent=2)
        print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
