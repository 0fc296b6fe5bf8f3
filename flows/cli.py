"""`trace-rl`: the command line of trace-rl.

trace-rl run [--set section.key=value ...]   prepare the task and model, then run the main job
trace-rl prepare [--set ...]                  only build the task data, index and model
trace-rl settings [--set ...]                 print the resolved settings as TOML-like lines
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from flows.errors import SettingsError

if TYPE_CHECKING:
    from flows.settings import Settings


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def load_settings(overrides: list[str] | None = None) -> Settings:
    """flows.settings.load_settings, imported on first use: it brings torch and every registry."""
    from flows.settings import load_settings as load

    return load(overrides)


def split_secrets(overrides: list[str]) -> tuple[list[str], dict[str, str]]:
    from flows.settings import split_secrets as split

    return split(overrides)


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(list(args.set or []))


def cmd_prepare(args: argparse.Namespace) -> int:
    from flows.pipeline import load_runtime

    runtime = load_runtime(_settings(args), _log)
    _log(
        f"task: {len(runtime.data.train)} train / {len(runtime.data.dev)} dev / {len(runtime.data.test)} test "
        f"questions, {len(runtime.data.corpus)} documents; model: {runtime.model_dir}"
    )
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    from flows.pipeline import make_retriever, prepare_task

    s = _settings(args)
    data = prepare_task(s, _log)
    make_retriever(s, data)
    _log(
        f"task in {data.directory}: {len(data.train)} train / {len(data.dev)} dev / {len(data.test)} test, "
        f"{len(data.corpus)} documents, BM25 index built"
    )
    return 0


def cmd_warmstart(args: argparse.Namespace) -> int:
    from flows.pipeline import make_retriever, prepare_model, prepare_task

    s = _settings(args)
    data = prepare_task(s, _log)
    model_dir = prepare_model(s, data, make_retriever(s, data), _log)
    if args.metrics:
        build = json.loads((model_dir / "build.json").read_text()) if (model_dir / "build.json").exists() else {}
        chosen = build.get("chosen", {})
        figures = {
            "parameters": build.get("parameters"),
            "chosen_step": chosen.get("step"),
            "sampled_success": chosen.get("success"),
            "loss": chosen.get("loss"),
        }
        _write_json(Path(args.metrics), figures)
    _log(f"model ready: {model_dir}")
    return 0


def _write_json(path: Path, value: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n")


def cmd_evaluate(args: argparse.Namespace) -> int:
    from flows.report import evaluate_run

    result = evaluate_run(_settings(args), _log)
    if args.out:
        _write_json(Path(args.out), headline_figures(result))
        _log(f"written to {args.out}")
    if args.detail:
        _write_json(Path(args.detail), result)
        _log(f"written to {args.detail}")
    return 0


HEADLINE = ("em", "f1", "greedy_em", "greedy_f1")


def headline_figures(result: dict) -> dict:
    """The accuracy figures of an evaluation, per split: what `dvc metrics show` and `dvc exp show`
    tabulate (one column each), without the counts and histograms of the detail file."""
    return {
        split: {k: v for k, v in figures.items() if k in HEADLINE}
        for split, figures in result.items()
        if isinstance(figures, dict)
    }


def cmd_report(args: argparse.Namespace) -> int:
    from flows.report import write_report

    compare = [name.strip() for name in (args.compare or "").split(",") if name.strip()]
    write_report(_settings(args), Path(args.out), _log, compare=compare)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    overrides = list(args.set or [])
    if args.allocator:
        overrides.append(f"trace.allocator={args.allocator}")
    s = load_settings(overrides)  # refuse bad settings before Prefect or any model starts
    from flows.pipeline import preflight
    from store.store import RolloutStore

    preflight(s)  # bad data files or model path: one line, before the flow
    RolloutStore(s.store_url()).close()  # an unreachable, foreign or newer database: one line, before the flow
    from flows.training import trace_training

    start = time.perf_counter()
    history = trace_training(_secrets_to_environment(overrides))
    run_dir = s.run.output_dir / s.run.name  # the flow wrote run_dir/metrics.jsonl
    if args.metrics:
        _export_metrics(Path(args.metrics), history)
    first, last = history[0], history[-1]
    iterations = [row for row in history if row["iteration"] >= 0]
    ratios = [r["rollout/effective_ratio"] for r in iterations if "rollout/effective_ratio" in r]

    def num(row: dict, key: str) -> float:
        value = row.get(key)
        return float("nan") if value is None else float(value)

    def before_after(key: str) -> str:
        return f"{num(first, key):.3f} -> {num(last, key):.3f}"

    summary = {
        "allocator": s.trace.allocator,
        "iterations": len(iterations),
        "dev EM before -> after": before_after("eval/em"),
        "dev F1 before -> after": before_after("eval/f1"),
        "mean effective ratio": f"{sum(ratios) / max(len(ratios), 1):.3f}",
        "leaves per iteration": f"{s.trace.budget}",
        "predictor AUC on dev (held out)": f"{num(last, 'predictor/dev_auc'):.3f}",
        "wall time": f"{time.perf_counter() - start:.0f}s",
        "metrics": str(run_dir / "metrics.jsonl"),
        "rollout database": s.store_url() if not s.store.url.get_secret_value() else "(store.url)",
        "trained policy": str(run_dir / "policy"),
    }
    print()
    width = max(len(k) for k in summary)
    for key, value in summary.items():
        print(f"  {key:<{width}}  {value}")
    return 0


def _export_metrics(directory: Path, history: list[dict]) -> None:
    """For DVC, with wall times left out so that two reproductions of the same run give identical
    files: train.json (final figures); train.csv (one row per training iteration, only the series
    every iteration has, so no plot draws a blank as 0); dev.csv (the dev evaluations: before
    training and every train.eval_every iterations)."""
    import csv

    rows = [{k: v for k, v in row.items() if not k.startswith("time/")} for row in history]
    iterations = [r for r in rows if r["iteration"] >= 0]
    keys: set[str] = set().union(*iterations) if iterations else set()
    complete = sorted(k for k in keys if all(r.get(k) is not None for r in iterations))
    evaluated = [r for r in rows if r.get("eval/em") is not None]
    dev_columns = sorted({k for r in evaluated for k in r if k.startswith(("eval/", "predictor/dev_"))})
    directory.mkdir(parents=True, exist_ok=True)
    for name, chosen, columns in (
        ("train.csv", iterations, [c for c in complete if c != "iteration"]),
        ("dev.csv", evaluated, dev_columns),
    ):
        with (directory / name).open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["iteration", *columns])
            writer.writerows([r["iteration"], *(_cell(r.get(c)) for c in columns)] for r in chosen)
    final = {k: v for k, v in rows[-1].items() if k.startswith(("eval/", "predictor/dev"))}
    final["eval/em_before"] = rows[0].get("eval/em")
    final["rollout/mean_effective_ratio"] = sum(r.get("rollout/effective_ratio", 0) for r in iterations) / max(
        len(iterations), 1
    )
    final["rollout/generated_tokens"] = sum(r.get("rollout/generated_tokens", 0) for r in iterations)
    _write_json(directory / "train.json", final)


def _cell(value: object) -> str:
    return "" if value is None else f"{value:.6g}" if isinstance(value, float) else str(value)


def cmd_bench(args: argparse.Namespace) -> int:
    from flows.bench import run_bench, variant_overrides
    from flows.bench_summary import markdown_table

    variants = [v.strip() for v in args.variants.split(",") if v.strip()] if args.variants else None
    for variant in variants or []:
        load_settings(variant_overrides(variant))  # refuse a bad variant before anything trains
    if args.late and not variants:
        raise SettingsError("--late needs --variants: the late regime runs the chosen variants from a shared pre-run")
    if args.with_warm and not args.late:
        raise SettingsError("--with-warm adds the warm regime to --late K; without --late the warm regime runs alone")
    overrides = list(args.set or [])
    load_settings(overrides)  # refuse bad settings before anything trains
    summary = run_bench(
        "quick" if args.quick else "default",
        Path(args.out),
        _log,
        variants,
        args.seeds,
        args.late,
        warm=True if args.with_warm else None,
        overrides=overrides,
    )
    print(markdown_table(summary))
    print(f"written to {args.out}/ (summary.json, table.md, runs.jsonl, plots)")
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


def _secrets_to_environment(overrides: list[str]) -> list[str]:
    """Move secret overrides (the store URL) into this process's environment, which the flow and
    the flow runs a served deployment starts inherit, so that Prefect never stores them."""
    public, env = split_secrets(overrides)
    os.environ.update(env)
    return public


def cmd_serve(args: argparse.Namespace) -> int:
    s = _settings(args)
    overrides = _secrets_to_environment(list(args.set or []))
    from flows.training import trace_training

    print(
        f"serving deployment 'trace-training/{s.orchestration.deployment}'"
        + (f" on schedule '{s.orchestration.cron}'" if s.orchestration.cron else " (runs on demand)")
    )
    from prefect.deployments.runner import EntrypointType

    trace_training.serve(
        name=s.orchestration.deployment,
        cron=s.orchestration.cron or None,
        parameters={"served": overrides},  # a run's own parameters merge over these (flow_overrides)
        print_starting_message=True,
        entrypoint_type=EntrypointType.MODULE_PATH,  # found by import, whatever the working directory
    )
    return 0


def cmd_query(args: argparse.Namespace) -> int:
    from store import queries
    from store.db import check_connection, make_engine

    s = _settings(args)
    if args.bins < 1:
        raise SettingsError(f"--bins must be at least 1, got {args.bins}")
    engine = make_engine(s.store_url(), read_only=True)
    try:
        check_connection(engine)
        if args.run is not None:
            queries.require_run(engine, args.run)
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


def cmd_headroom(args: argparse.Namespace) -> int:
    from flows.report import headroom_table
    from store.store import RolloutStore

    s = _settings(args)
    store = RolloutStore(s.store_url(), create=False, read_only=True)
    try:
        table = headroom_table(store, s.run.name)
    finally:
        store.close()
    if not table.rows:
        print(
            f"run {s.run.name!r} has no headroom measurement: train it with `--set headroom.every=N` "
            "(measures at iteration 0 and every N after)"
        )
        return 1
    print(table.render())
    if args.csv:
        table.to_csv(args.csv)
        print(f"\nwritten to {args.csv}")
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    """List, delete or rename the runs of the rollout database (and their folders under run.output_dir)."""
    import shutil

    from flows.sections import RUN_NAME
    from store import queries
    from store.store import RolloutStore

    s = _settings(args)
    store = RolloutStore(s.store_url(), create=False)
    try:
        if args.action == "list":
            rows = tuple(
                (
                    r.name,
                    r.status,
                    r.iterations,
                    r.allocator,
                    f"{r.created_at:%Y-%m-%d %H:%M}",
                    f"{r.updated_at:%Y-%m-%d %H:%M}",
                    r.lease_owner or "",
                )
                for r in store.runs()
            )
            columns = ("name", "status", "iterations", "allocator", "created", "updated", "writer")
            print(queries.Table(columns, rows).render() if rows else "no runs yet")
            return 0
        if not args.name:
            raise SettingsError(f"`trace-rl runs {args.action}` needs a run name")
        folder = s.run.output_dir / args.name
        if args.action == "delete":
            store.run_id(args.name)  # an unknown name fails here
            if not args.yes:
                print(
                    f"would delete run {args.name!r}: its rows in {s.store_url().split('://')[0]} and {folder}/; "
                    "add --yes to delete"
                )
                return 2
            store.delete_run(args.name)
            if folder.is_symlink():
                folder.unlink()
            elif folder.is_dir():
                shutil.rmtree(folder)
            print(f"deleted run {args.name!r}")
            return 0
        new = args.new or ""
        if not RUN_NAME.fullmatch(new):
            raise SettingsError(f"{new!r} is not a run name (letters, digits, '-', '_', '.'; no path separators)")
        target = s.run.output_dir / new
        if target.exists():
            raise SettingsError(f"{target} already exists; choose another name")
        moves = {str(folder): str(target), str(folder.resolve()): str(target.resolve())}
        store.rename_run(args.name, new, moves if folder.is_dir() else None)
        if folder.is_dir():
            folder.rename(target)
        print(f"renamed run {args.name!r} to {new!r}" + (f" (and {folder} to {target})" if target.is_dir() else ""))
        return 0
    finally:
        store.close()


def cmd_sql(args: argparse.Namespace) -> int:
    from store.queries import run_sql

    table = run_sql(_settings(args).store_url(), args.statement)
    print(table.render())
    if args.csv:
        table.to_csv(args.csv)
    return 0


def cmd_db(args: argparse.Namespace) -> int:
    from store.db import (
        backup,
        current_revision,
        ensure_schema,
        head_revision,
        make_engine,
        refuse_foreign,
        render_url,
        upgrade,
    )

    url = _settings(args).store_url()
    if args.action == "backup":
        if not args.target:
            raise SettingsError("`trace-rl db backup` needs the file to copy to: trace-rl db backup PATH")
        backup(url, Path(args.target))
        print(f"{render_url(url)} copied to {args.target}")
        return 0
    if not (args.action == "upgrade" and args.adopt):
        refuse_foreign(url)
    engine = make_engine(url, read_only=args.action == "status")
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
    parser.add_argument("--debug", action="store_true", help="show the full traceback of a known error")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, func, text in [
        ("run", cmd_run, "prepare the task and model, then run the main job"),
        ("prepare", cmd_prepare, "build the task data, retrieval index and model only"),
        ("data", cmd_data, "generate (or read) the task data and build the retrieval index"),
        ("warmstart", cmd_warmstart, "build and warm-start the default model (or convert/load the preset)"),
        ("evaluate", cmd_evaluate, "dev and test accuracy of a run's final policy"),
        ("report", cmd_report, "plots and an HTML page for a run"),
        ("settings", cmd_settings, "print the resolved settings"),
        ("query", cmd_query, "a named analysis query over the rollout database"),
        ("sql", cmd_sql, "your own read-only SQL over the rollout database"),
        ("headroom", cmd_headroom, "the oracle ledger of a run: its Stage 1 against the oracle's and uniform's"),
        ("db", cmd_db, "show or upgrade the rollout database's schema"),
        ("runs", cmd_runs, "list, delete or rename runs (rows and folders)"),
        ("serve", cmd_serve, "serve the training flow as a Prefect deployment (scheduled by settings)"),
        ("bench", cmd_bench, "train every allocator at equal budget over seeds and report the comparison"),
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
        if name == "runs":
            p.add_argument("action", choices=["list", "delete", "rename"])
            p.add_argument("name", nargs="?", help="the run (delete, rename)")
            p.add_argument("new", nargs="?", help="rename: the new name")
            p.add_argument("--yes", action="store_true", help="delete: really delete")
        if name == "headroom":
            p.add_argument("--csv", help="also write the ledger to this CSV file")
        if name == "sql":
            p.add_argument("statement", help="a SELECT statement (runs on a read-only connection)")
            p.add_argument("--csv", help="also write the result to this CSV file")
        if name == "db":
            p.add_argument("action", choices=["upgrade", "status", "backup"])
            p.add_argument("target", nargs="?", help="backup: the file to copy the SQLite database to")
            p.add_argument(
                "--adopt",
                action="store_true",
                help="upgrade: add trace-rl's tables to a database that already holds other tables",
            )
        if name == "run":
            p.add_argument("--allocator", help="shorthand for --set trace.allocator=NAME")
            p.add_argument("--metrics", help="also write train.json and train.csv (per iteration) to this folder")
        if name == "warmstart":
            p.add_argument("--metrics", help="write the warm start's figures to this JSON file")
        if name == "evaluate":
            p.add_argument("--out", help="write the accuracy figures (EM, F1; sampled and greedy) to this JSON file")
            p.add_argument("--detail", help="write every figure (question counts, success histogram) to this JSON file")
        if name == "bench":
            p.add_argument("--quick", action="store_true", help="the CI size: tiny task, one seed, one iteration")
            p.add_argument("--out", default="bench/results", help="folder for runs.jsonl, summary.json and plots")
            p.add_argument(
                "--variants",
                help="only these, comma-separated: allocator names, optionally with a predictor and settings, "
                "e.g. 'uniform,trace+online,uniform@policy.learning_rate=0.0001;policy.kl_coef=0.1'",
            )
            p.add_argument("--seeds", type=int, help="seeds per variant (default: the size's)")
            p.add_argument(
                "--with-warm",
                action="store_true",
                help="with --late: run the warm regime too, seed by seed (benchmark v2)",
            )
            p.add_argument(
                "--late",
                type=int,
                default=0,
                metavar="K",
                help="late regime: every variant starts "
                "from the checkpoint of K iterations of uniform training (per seed, shared)",
            )
        if name == "report":
            p.add_argument("--out", default="report", help="folder for the plots and index.html")
            p.add_argument("--compare", help="other runs of the same store to draw beside it (comma-separated)")
        if name == "settings":
            p.add_argument("--defaults", action="store_true", help="print the defaults as a settings.toml")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # after parsing: `--help` needs none of the heavy imports
    from store.db import StoreError
    from trace_core.search_agent.retrieval import RetrieverError

    try:
        return int(args.func(args))
    except (SettingsError, StoreError, RetrieverError, FileNotFoundError, ValueError) as err:
        if args.debug:
            raise
        if isinstance(err, SettingsError):
            print(f"trace-rl: {err}", file=sys.stderr)
            return 2
        print(f"trace-rl: {err}  (trace-rl --debug ... shows where)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
