"""Benchmark: how fast one iteration's trees go into the rollout store (target >= 20,000 nodes/s on SQLite).

    .venv/bin/python bench/store_insert.py [--postgres postgresql://root@127.0.0.1:5432/test]

Writes bench/results/store_insert.json. Each repeat stores `--trees` trees of `--nodes` nodes
(turns with 24 model tokens and 60 observation tokens, like the default task) as one iteration
through `RolloutStore.save_trees`; the figure quoted is the median over repeats.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
from sqlalchemy import create_engine, text

from trace_core.method.tree import RolloutNode, RolloutTree
from trace_core.search_agent.data import QARecord
from trace_rl.store.store import RolloutStore


def make_trees(n_trees: int, n_nodes: int, rng: np.random.Generator, tag: str) -> list[RolloutTree]:
    trees = []
    for t in range(n_trees):
        tree = RolloutTree(QARecord(f"{tag}-{t}", f"question {t}?", ("a",), "bench"), tuple(range(40)))
        for i in range(1, n_nodes):
            parent = int(rng.integers(0, i))
            if tree.nodes[parent].terminal:
                parent = 0
            terminal = bool(rng.random() < 0.4)
            tree.add(
                RolloutNode(
                    node_id=-1,
                    parent_id=parent,
                    depth=-1,
                    model_ids=tuple(rng.integers(0, 900, 24).tolist()),
                    model_logprobs=tuple(rng.random(24).tolist()),
                    observation_ids=() if terminal else tuple(range(60)),
                    text="<think> x </think>\n<search> y </search>",
                    observation="" if terminal else "<information>z",
                    action="search",
                    argument="y",
                    finish_reason="stop",
                    terminal=terminal,
                    reward=float(rng.integers(0, 2)) if terminal else None,
                    origin="stage1",
                )
            )
        trees.append(tree)
    return trees


def measure(url: str, trees_per_iteration: int, nodes: int, repeats: int) -> dict:
    store = RolloutStore(url)
    run = store.open_run(f"bench-{uuid.uuid4().hex[:8]}", {}, "h", "bench")
    rng = np.random.default_rng(0)
    rates = []
    for it in range(repeats):
        trees = make_trees(trees_per_iteration, nodes, rng, f"it{it}")
        start = time.perf_counter()
        store.save_trees(run, it, trees, "trace", stage="roll_out_prefixes")
        seconds = time.perf_counter() - start
        rates.append(sum(len(t) for t in trees) / seconds)
    store.close()
    return {
        "median_nodes_per_s": statistics.median(rates),
        "runs": rates,
        "nodes_per_iteration": trees_per_iteration * nodes,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trees", type=int, default=64)
    parser.add_argument("--nodes", type=int, default=80)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--postgres", help="also measure on this PostgreSQL server (a scratch schema is used)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/store_insert.json"))
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        results["sqlite"] = measure(f"sqlite:///{tmp}/bench.db", args.trees, args.nodes, args.repeats)
    if args.postgres:
        schema = f"bench_{uuid.uuid4().hex[:8]}"
        admin = create_engine(args.postgres)
        with admin.begin() as conn:
            conn.execute(text(f"CREATE SCHEMA {schema}"))
        try:
            sep = "&" if "?" in args.postgres else "?"
            results["postgresql"] = measure(
                f"{args.postgres}{sep}options=-csearch_path%3D{schema}", args.trees, args.nodes, args.repeats
            )
        finally:
            with admin.begin() as conn:
                conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {"command": "python bench/store_insert.py --postgres postgresql://root@127.0.0.1:5432/test", **results},
            indent=2,
        )
        + "\n"
    )
    for backend, r in results.items():
        print(
            f"{backend:10s} {r['median_nodes_per_s']:10.0f} nodes/s (median of {len(r['runs'])}, "
            f"{r['nodes_per_iteration']} nodes per iteration)"
        )


if __name__ == "__main__":
    main()
