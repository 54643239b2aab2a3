"""Pick launch parameters from a ``scripts/tune_kernels.py --json`` sweep: per kernel, the
configuration with the least total time over a layer's calls (``--weights`` gives how many
calls per layer each shape gets, e.g. 6 at the hidden width and 1 at the MLP width for the
row-affine passes of a LLaMA layer), printed as ``FLASHBONE_KERNEL_CONFIG`` JSON.

    python scripts/pick_config.py sweep.json --weights 4096x4096=6,4096x11008=1
"""

import argparse
import json
import sys


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("sweep")
    p.add_argument("--weights", default="")
    a = p.parse_args()
    weights = {k: float(v) for k, v in (kv.split("=") for kv in a.weights.split(",") if kv)}
    totals: dict[str, dict[str, float]] = {}
    counts: dict[str, dict[str, int]] = {}
    for row in json.load(open(a.sweep))["rows"]:
        if "kernel" not in row:
            continue
        w = weights.get(row["shape"], 1.0)
        for ms, cfg in row["all"]:
            key = json.dumps(cfg, sort_keys=True)
            totals.setdefault(row["kernel"], {}).setdefault(key, 0.0)
            totals[row["kernel"]][key] += w * ms
            counts.setdefault(row["kernel"], {}).setdefault(key, 0)
            counts[row["kernel"]][key] += 1
    pick = {}
    for kernel, by_cfg in totals.items():
        full = max(counts[kernel].values())  # configurations that ran at every shape
        best = min((k for k in by_cfg if counts[kernel][k] == full), key=by_cfg.get)
        pick[kernel] = json.loads(best)
    print(json.dumps(pick))
    return 0


if __name__ == "__main__":
    sys.exit(main())
