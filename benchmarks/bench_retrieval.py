"""kNN-LM on a trained run: val bpb with and without retrieval, build cost, query latency flat vs IVF-PQ.

On the run's own model and corpus (the default ``apt train`` run: the embedded corpus), it

1. builds the datastore over the training split (timed; size on disk and index memory),
2. scores the core's validation windows once (the same windows as the run's ``val_bpb``),
3. sweeps lmbda x T, choosing T per lmbda on the first half of the windows and reporting
   the second half (never used for choosing) next to the model alone,
4. times per-token queries against the flat index and an IVF-PQ index of the same keys,
   and the held-out bpb through IVF-PQ.

    apt train --no-plugins --run-dir runs/base                # the default run (about 2 min on 2 free cores)
    python -u benchmarks/bench_retrieval.py --run runs/base --store runs/base/bench-store
    python benchmarks/bench_retrieval.py --run runs/base --key final_hidden --k 256

Prints tables and ratios; nothing is asserted.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
import torch
from apt.core import APTConfig
from apt.plugins import PluginManager
from apt.train import Trainer
from apt.train import bits_per_byte
from apt.train import load_weights
from apt_plugin_retrieval import Datastore
from apt_plugin_retrieval import RetrievalConfig
from apt_plugin_retrieval import RetrievalError
from apt_plugin_retrieval import build_datastore
from apt_plugin_retrieval import make_index
from apt_plugin_retrieval import plan_index
from apt_plugin_retrieval import score_batches
from apt_plugin_retrieval import weights_sha256


def _trainer(run_dir: Path, data: str | None, val_batches: int | None) -> Trainer:
    config = APTConfig.from_yaml(run_dir / "config.yaml")
    config.plugins = []  # the model alone; the kNN-LM is applied below
    config.training.resume = None
    if data is not None:
        config.data.path = data
    if val_batches is not None:
        config.training.val_batches = val_batches
    config.training.device = "cpu"
    trainer = Trainer(config, PluginManager(), run_dir=None)
    trainer.setup()
    assert trainer.model is not None
    load_weights(trainer.model, run_dir / "model.safetensors")
    trainer.model.eval()
    return trainer


def _folder_mib(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.iterdir()) / 2**20


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, required=True, help="a finished run folder (config.yaml + model.safetensors)")
    p.add_argument("--data", help="another corpus (data.path) for the datastore and validation")
    p.add_argument("--key", default="last_ffn_input", choices=["last_ffn_input", "final_hidden"])
    p.add_argument("--k", type=int, default=64)
    p.add_argument("--val-batches", type=int, default=None, help="validation batches (default: the run's)")
    p.add_argument("--latency-queries", type=int, default=2048)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--store", type=Path, help="keep the datastore here and reuse it when it matches the weights")
    p.add_argument("--ivf-train-keys", type=int, default=100_000, help="IVF-PQ training sample (sets nlist <= N/39)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)

    trainer = _trainer(args.run, args.data, args.val_batches)
    model, config = trainer.model, trainer.config
    assert model is not None
    val = trainer.validate()
    tmp = Path(tempfile.mkdtemp(prefix="bench-retrieval-"))
    try:
        cfg = RetrievalConfig(key=args.key, k=args.k, progress=False, index="flat")
        folder = args.store or tmp / "flat"
        store = _reuse(folder, weights_sha256(model), args.key)
        if store is None:
            store = build_datastore(
                folder, model, trainer.data.train, cfg, block_size=config.model.block_size,
                tokenizer={"repr": repr(trainer.data.tokenizer), "vocab_size": trainer.data.tokenizer.vocab_size},
                weights_sha256=weights_sha256(model),
            )  # fmt: skip
        build_s = float(store.manifest["build_s"])
        spec = store.spec
        print(f"run {args.run} ({config.data.path or 'embedded corpus'}): {len(trainer.data.train)} train / "
              f"{len(trainer.data.val)} validation tokens; {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params")  # fmt: skip
        print(f"datastore: {store.size} keys x {store.dim} ({args.key}), built in {build_s:.1f} s; "
              f"{_folder_mib(store.folder):.1f} MiB on disk (float16 keys + int32 values); "
              f"flat index {spec.memory_bytes(store.size, store.dim) / 2**20:.0f} MiB in memory")  # fmt: skip

        batches = list(trainer.val_batches)
        t0 = time.perf_counter()
        scored = score_batches(model, batches, store, k=args.k, key=args.key)
        n_tok = scored.tokens
        print(f"scored {n_tok} validation tokens ({len(batches)} batches) in {time.perf_counter() - t0:.1f} s "
              f"(flat search {1000 * scored.search_s / n_tok:.3f} ms/token batched); "
              f"hit rate {scored.hit_rate():.3f}")  # fmt: skip

        lm_all = bits_per_byte(scored.batch_mean_nll(0.0, 1.0))
        print(f"core val_bpb {val['val_bpb']:.4f}; recomputed here (lambda=0) {lm_all:.4f}")
        n = len(batches)
        tune, held = (range(n // 2), range(n // 2, n)) if n > 1 else (range(n), range(n))
        lm_held = bits_per_byte(scored.batch_mean_nll(0.0, 1.0, held))
        unit = scored.nearest_distance()
        scales = [0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0]
        print(f"\nmedian nearest-neighbour distance {unit:.4g}; T = scale x that; T and lambda chosen on windows "
              f"{tune.start}-{tune.stop - 1}, reported on {held.start}-{held.stop - 1}")  # fmt: skip
        print(f"{'lambda':>7} {'best T':>9} {'tune bpb':>9} {'held-out bpb':>13} {'model alone':>12} {'reduction':>10}")
        best_overall = None
        for lam in (0.05, 0.1, 0.25, 0.5, 0.75):
            rows = [(bits_per_byte(scored.batch_mean_nll(lam, s * unit, tune)), s * unit) for s in scales]
            tune_bpb, temp = min(rows)
            held_bpb = bits_per_byte(scored.batch_mean_nll(lam, temp, held))
            red = 1 - held_bpb / lm_held
            print(f"{lam:>7} {temp:>9.4g} {tune_bpb:>9.4f} {held_bpb:>13.4f} {lm_held:>12.4f} {100 * red:>9.2f}%")
            if best_overall is None or tune_bpb < best_overall[0]:
                best_overall = (tune_bpb, lam, temp)
        assert best_overall is not None
        _, lam, temp = best_overall
        knn_all = bits_per_byte(scored.batch_mean_nll(lam, temp))
        knn_held = bits_per_byte(scored.batch_mean_nll(lam, temp, held))
        print(f"\ntuned lambda={lam}, T={temp:.4g}:")
        print(f"  all windows   val_bpb {lm_all:.4f} -> retrieval/val_bpb {knn_all:.4f}  ({100 * (1 - knn_all / lm_all):.2f}% lower; tuned on half of these)")  # fmt: skip
        print(f"  held-out half val_bpb {lm_held:.4f} -> {knn_held:.4f}  ({100 * (1 - knn_held / lm_held):.2f}% lower)")

        # query latency: flat vs IVF-PQ over the same keys (one query at a time and batched)
        keys = np.asarray(store.keys)
        ivf_spec = plan_index(store.size, store.dim, RetrievalConfig(index="ivfpq", train_keys=args.ivf_train_keys))
        t0 = time.perf_counter()
        ivf_index = make_index(keys, ivf_spec, seed=0)
        ivf_build = time.perf_counter() - t0
        ivf = Datastore(tmp / "ivf", {**store.manifest, "index": ivf_spec.as_dict()}, store.keys, store.vals, ivf_index)
        queries = torch.cat([d for d in _keys_of(model, batches, args.key)])[: args.latency_queries]
        print(f"\nIVF-PQ ({ivf_spec.nlist} cells, {ivf_spec.pq_m}x{ivf_spec.pq_bits}-bit codes, nprobe {ivf_spec.nprobe}, "
              f"trained on {ivf_spec.train_keys} keys): built in {ivf_build:.1f} s, "
              f"~{ivf_spec.memory_bytes(store.size, store.dim) / 2**20:.0f} MiB")  # fmt: skip
        for name, ds in (("flat", store), ("ivfpq", ivf)):
            for batch in (1, len(queries)):
                t0 = time.perf_counter()
                for i in range(0, len(queries), batch):
                    ds.search(queries[i : i + batch], args.k)
                ms = 1000 * (time.perf_counter() - t0) / len(queries)
                print(f"  {name:>5} k={args.k} {'one query per call' if batch == 1 else f'{batch} queries per call':>22}: {ms:.3f} ms/token")  # fmt: skip
        q = np.ascontiguousarray(queries.float().numpy())
        exact = store.index.search(q, 16)[1]
        approx = ivf_index.search(q, 16)[1]  # raw PQ distances, no re-ranking
        recall = np.mean([len(set(a.tolist()) & set(b.tolist())) / 16 for a, b in zip(exact, approx, strict=True)])
        ivf_scored = score_batches(model, batches, ivf, k=args.k, key=args.key)
        ivf_held = bits_per_byte(ivf_scored.batch_mean_nll(lam, temp, held))
        print(f"  IVF-PQ recall@16 of the exact neighbours from raw codes {recall:.3f} (search re-ranks 4k); "
              f"held-out bpb through IVF-PQ {ivf_held:.4f} "
              f"({100 * (1 - ivf_held / lm_held):.2f}% lower than the model alone)")  # fmt: skip
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _reuse(folder: Path, weights: str, key: str) -> Datastore | None:
    try:
        store = Datastore.open(folder)
    except RetrievalError:
        return None
    return store if store.weights_sha256 == weights and store.manifest["key"] == key else None


def _keys_of(model: torch.nn.Module, batches: list, key: str) -> list[torch.Tensor]:
    from apt_plugin_retrieval import capture_keys

    out = []
    with torch.no_grad(), capture_keys(model, key) as seen:
        for x, _ in batches:
            model(x)
            out.append(seen[-1].reshape(-1, seen[-1].size(-1)))
    return out


if __name__ == "__main__":
    main()
