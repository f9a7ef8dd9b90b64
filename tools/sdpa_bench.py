#!/usr/bin/env python3
"""PyTorch scaled_dot_product_attention over a full f16 cache: the peer of
palu-cuda-attention-bench. Decode (one query token), batch 1, 32 heads x 128, T cached tokens,
q [1,32,1,128], k/v [1,32,T,128] f16. Timed like the C++ bench: CUDA events around one call,
L2 flushed (256 MiB memset, not timed) before each, median of --iters. Every SDPA backend that
accepts the shape is timed; the row reports the fastest (and names it).
Prints CSV rows: kernel,T,time_us,bytes,flops,bound_us,gbps,tflops (bound from --copy-gbps and
--tflops, the peaks palu-cuda-attention-bench measured in the same run)."""
import argparse
import statistics

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel


def time_us(fn, iters, flush):
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    ts = []
    for i in range(iters + 2):
        flush.fill_(i & 0xFF)
        a.record()
        fn()
        b.record()
        b.synchronize()
        if i >= 2:
            ts.append(a.elapsed_time(b) * 1000.0)
    return statistics.median(ts)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--T", default="4096,16384,65536,131072")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--copy-gbps", type=float, required=True)
    ap.add_argument("--tflops", type=float, required=True)
    args = ap.parse_args()
    H, d = 32, 128
    flush = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
    backends = [("flash", SDPBackend.FLASH_ATTENTION), ("efficient", SDPBackend.EFFICIENT_ATTENTION),
                ("cudnn", SDPBackend.CUDNN_ATTENTION), ("math", SDPBackend.MATH)]
    print(f"# torch {torch.__version__}, {torch.cuda.get_device_name()}")
    for T in [int(x) for x in args.T.split(",")]:
        g = torch.Generator(device="cuda").manual_seed(T)
        q = torch.randn(1, H, 1, d, device="cuda", dtype=torch.float16, generator=g)
        k = torch.randn(1, H, T, d, device="cuda", dtype=torch.float16, generator=g)
        v = torch.randn(1, H, T, d, device="cuda", dtype=torch.float16, generator=g)
        ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float())
        best = None
        for name, be in backends:
            if name == "math" and best is not None:
                continue
            try:
                with sdpa_kernel([be]):
                    o = F.scaled_dot_product_attention(q, k, v)
                    err = (o.float() - ref).abs().max().item()
                    us = time_us(lambda: F.scaled_dot_product_attention(q, k, v), args.iters, flush)
            except RuntimeError as e:
                print(f"# T={T} {name}: not available ({str(e).splitlines()[0][:80]})")
                continue
            print(f"# T={T} {name}: {us:.2f} us, max|err| vs f32 {err:.2e}")
            if best is None or us < best[1]:
                best = (name, us)
        del ref
        nbytes = 2.0 * T * H * d * 2 + 2 * H * d * 2
        flops = 4.0 * H * T * d
        bound = max(nbytes / (args.copy_gbps * 1e9), flops / (args.tflops * 1e12)) * 1e6
        us = best[1]
        print(f"SDPA ({best[0]}),{T},{us:.2f},{nbytes:.0f},{flops:.0f},{bound:.2f},"
              f"{nbytes / (us * 1e-6) / 1e9:.1f},{flops / (us * 1e-6) / 1e12:.1f}", flush=True)
        del q, k, v
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
