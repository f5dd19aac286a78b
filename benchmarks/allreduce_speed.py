"""What averaging gradients costs a torchrun training process on this machine: one gloo all-reduce, timed.

Usage (two one-thread processes, as `train.nproc: 2` runs them on a CPU):
    OMP_NUM_THREADS=1 python -m torch.distributed.run --standalone --nproc_per_node=2 \\
        benchmarks/allreduce_speed.py [--floats 2300000 1440000 100000] [--calls 30]
Prints, on rank 0, the wall and CPU milliseconds of one all-reduce of that many float32 values (and float16),
the mean of --calls calls after 3 warm-ups. DDP sends every parameter's gradient once per step (in buckets):
the default SNIPS model has 2.33 M parameters, 1.44 M of them the word embeddings.
"""

import argparse
import time

import torch
import torch.distributed as dist


def timed(t: torch.Tensor, calls: int) -> tuple[float, float]:
    """(wall ms, CPU ms) of one all-reduce of t."""
    for _ in range(3):
        dist.all_reduce(t)
    dist.barrier()
    w0, c0 = time.perf_counter(), time.process_time()
    for _ in range(calls):
        dist.all_reduce(t)
    return (time.perf_counter() - w0) / calls * 1e3, (time.process_time() - c0) / calls * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--floats", type=int, nargs="+", default=[2_300_000, 1_440_000, 100_000])
    ap.add_argument("--calls", type=int, default=30)
    args = ap.parse_args()
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    try:
        if dist.get_rank() == 0:
            print(f"{dist.get_world_size()} processes, gloo\n{'floats':>10s} {'fp32 ms':>8s} {'(CPU ms)':>9s} "
                  f"{'fp16 ms':>8s}", flush=True)
        for n in args.floats:
            wall, cpu = timed(torch.randn(n), args.calls)
            half, _ = timed(torch.randn(n).half(), args.calls)
            if dist.get_rank() == 0:
                print(f"{n:10d} {wall:8.2f} {cpu:9.2f} {half:8.2f}", flush=True)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
