"""Where the host spends a training step: cProfile of a few bench steps (real kernels on CUDA).

    PYTHONPATH=src python scripts/host_profile.py --methods bone [bench flags] [--top 35]

Uses the bench's model and wrapping; 3 warm-up steps, then 3 steps under cProfile (host time
only: CUDA work is asynchronous). Prints the functions with the most own time and the
flashbone functions with the most cumulative time, per step.
"""
import argparse
import cProfile
import gc
import pstats
import sys

import torch

from flashbone import bench


def main() -> int:
    p = argparse.ArgumentParser()
    bench.add_arguments(p)
    p.add_argument("--top", type=int, default=30)
    a = p.parse_args()
    dev, dtype = bench.resolve(a)
    for m in bench.parse_methods(a.methods):
        _, step = bench.training_step(m, a, dev, dtype)
        for _ in range(3):
            step()
        torch.cuda.synchronize()
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(3):
            step()
        prof.disable()
        torch.cuda.synchronize()
        print(f"== {m}: own time (tottime, 3 steps)")
        st = pstats.Stats(prof)
        st.sort_stats("tottime").print_stats(a.top)
        print(f"== {m}: flashbone cumulative")
        st.sort_stats("cumulative").print_stats("flashbone", a.top)
        step = None  # frees the model and optimizer before the next method
        gc.collect()
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
