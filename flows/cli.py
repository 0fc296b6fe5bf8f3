"""`trace-rl`: the command line of trace-rl.

trace-rl run [--set section.key=value ...]   prepare the task and model, then run the main job
trace-rl prepare [--set ...]                  only build the task data, index and model
trace-rl settings [--set ...]                 print the resolved settings as TOML-like lines
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence

from flows.settings import Settings, SettingsError, load_settings
from store.db import StoreError


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(list(args.set or []))


def cmd_prepare(args: argparse.Namespace) -> int:
    from flows.pipeline import load_runtime

    runtime = load_runtime(_settings(args), _log)
    _log(f"task: {len(runtime.data.train)} train / {len(runtime.data.dev)} dev / {len(runtime.data.test)} test "
         f"questions, {len(runtime.data.corpus)} documents; model: {runtime.model_dir}")  # fmt: skip
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from flows.train import train

    overrides = list(args.set or [])
    if args.allocator:
        overrides.append(f"trace.allocator={args.allocator}")
    s = load_settings(overrides)
    start = time.perf_counter()
    history = train(s, _log)
    run_dir = s.run.output_dir / s.run.name
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in history))
    first, last = history[0], history[-1]
    iterations = [row for row in history if row["iteration"] >= 0]
    summary = {
        "allocator": s.trace.allocator,
        "iterations": len(iterations),
        "dev EM before -> after": f"{first['eval/em']:.3f} -> {last['eval/em']:.3f}",
        "dev F1 before -> after": f"{first['eval/f1']:.3f} -> {last['eval/f1']:.3f}",
        "mean effective ratio": f"{sum(r['rollout/effective_ratio'] for r in iterations) / len(iterations):.3f}",
        "leaves per iteration": f"{s.trace.budget}",
        "predictor AUC on dev (held out)": f"{last.get('predictor/dev_auc', float('nan')):.3f}",
        "wall time": f"{time.perf_counter() - start:.0f}s",
        "metrics": str(run_dir / "metrics.jsonl"),
    }
    print()
    width = max(len(k) for k in summary)
    for key, value in summary.items():
        print(f"  {key:<{width}}  {value}")
    return 0


def cmd_settings(args: argparse.Namespace) -> int:
    if args.defaults:
        from flows.settings import defaults_toml

        print(defaults_toml(), end="")
        return 0
    for section, values in _settings(args).snapshot().items():
        print(f"[{section}]")
        for key, value in values.items():
            print(f"{key} = {json.dumps(value)}")
        print()
    return 0


def cmd_query(args: argparse.Namespace) -> int:
    from store import queries
    from store.db import check_connection, make_engine

    s = _settings(args)
    engine = make_engine(s.store_url(), read_only=True)
    try:
        check_connection(engine)
        if args.name == "tree":
            if args.tree_id is None:
                raise SettingsError("`trace-rl query tree` needs a tree id")
            print(queries.draw_tree(engine, args.tree_id))
            return 0
        table = {
            "effective-ratio": lambda: queries.effective_ratio(engine, args.run),
            "calibration": lambda: queries.calibration(engine, args.run, args.bins),
            "depth-success": lambda: queries.depth_success(engine, args.run),
        }[args.name]()
    finally:
        engine.dispose()
    print(table.render())
    if args.csv:
        table.to_csv(args.csv)
        print(f"\nwritten to {args.csv}")
    return 0


def cmd_sql(args: argparse.Namespace) -> int:
    from store.queries import run_sql

    table = run_sql(_settings(args).store_url(), args.statement)
    print(table.render())
    if args.csv:
        table.to_csv(args.csv)
    return 0


def cmd_db(args: argparse.Namespace) -> int:
    from store.db import current_revision, ensure_schema, head_revision, make_engine, render_url, upgrade

    url = _settings(args).store_url()
    engine = make_engine(url)
    try:
        if args.action == "upgrade":
            upgrade(engine)
            ensure_schema(engine)
        print(f"{render_url(url)}: schema revision {current_revision(engine)} (this code: {head_revision()})")
    finally:
        engine.dispose()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trace-rl", description="Train tool-using LLM agents with TRACE.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, func, text in [
        ("run", cmd_run, "prepare the task and model, then run the main job"),
        ("prepare", cmd_prepare, "build the task data, retrieval index and model only"),
        ("settings", cmd_settings, "print the resolved settings"),
        ("query", cmd_query, "a named analysis query over the rollout database"),
        ("sql", cmd_sql, "your own read-only SQL over the rollout database"),
        ("db", cmd_db, "show or upgrade the rollout database's schema"),
    ]:
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override one setting")
        p.set_defaults(func=func)
        if name == "query":
            p.add_argument("name", choices=["effective-ratio", "calibration", "depth-success", "tree"])
            p.add_argument("tree_id", nargs="?", type=int, help="the tree to draw (query tree)")
            p.add_argument("--run", help="only this run")
            p.add_argument("--bins", type=int, default=10, help="calibration bins")
            p.add_argument("--csv", help="also write the table to this CSV file")
        if name == "sql":
            p.add_argument("statement", help="a SELECT statement (runs on a read-only connection)")
            p.add_argument("--csv", help="also write the result to this CSV file")
        if name == "db":
            p.add_argument("action", choices=["upgrade", "status"])
        if name == "run":
            p.add_argument("--allocator", help="shorthand for --set trace.allocator=NAME")
        if name == "settings":
            p.add_argument("--defaults", action="store_true", help="print the defaults as a settings.toml")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except SettingsError as err:
        print(f"trace-rl: {err}", file=sys.stderr)
        return 2
    except StoreError as err:
        print(f"trace-rl: {err}", file=sys.stderr)
        return 1
    except (FileNotFoundError, ValueError) as err:
        print(f"trace-rl: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
