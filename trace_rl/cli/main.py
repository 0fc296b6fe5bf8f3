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
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

from trace_rl.cli.store_commands import cmd_db, cmd_headroom, cmd_query, cmd_runs, cmd_sql
from trace_rl.cli.support import load_settings
from trace_rl.cli.support import log as _log
from trace_rl.cli.support import secrets_to_environment as _secrets_to_environment
from trace_rl.cli.support import settings_of as _settings
from trace_rl.config.errors import SettingsError
from trace_rl.report.metrics_files import export_metrics, headline_figures, write_json


def cmd_prepare(args: argparse.Namespace) -> int:
    from trace_rl.flows.pipeline import load_runtime

    runtime = load_runtime(_settings(args), _log)
    _log(
        f"task: {len(runtime.data.train)} train / {len(runtime.data.dev)} dev / {len(runtime.data.test)} test "
        f"questions, {len(runtime.data.corpus)} documents; model: {runtime.model_dir}"
    )
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    from trace_rl.flows.pipeline import make_tools, prepare_task

    s = _settings(args)
    data = prepare_task(s, _log)
    make_tools(s, data)
    index = ", BM25 index built" if s.task.family == "search_qa" and s.retriever.name == "bm25" else ""
    _log(
        f"task in {data.directory}: {len(data.train)} train / {len(data.dev)} dev / {len(data.test)} test, "
        f"{len(data.corpus)} documents{index}"
    )
    return 0


def cmd_warmstart(args: argparse.Namespace) -> int:
    from trace_rl.flows.pipeline import make_tools, prepare_model, prepare_task

    s = _settings(args)
    data = prepare_task(s, _log)
    model_dir = prepare_model(s, data, make_tools(s, data), _log)
    if args.metrics:
        build = json.loads((model_dir / "build.json").read_text()) if (model_dir / "build.json").exists() else {}
        chosen = build.get("chosen", {})
        figures = {
            "parameters": build.get("parameters"),
            "chosen_step": chosen.get("step"),
            "sampled_success": chosen.get("success"),
            "loss": chosen.get("loss"),
        }
        write_json(Path(args.metrics), figures)
    _log(f"model ready: {model_dir}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from trace_rl.report.evaluation import evaluate_run

    result = evaluate_run(_settings(args), _log, store_outcomes=not args.no_store)
    if args.out:
        write_json(Path(args.out), headline_figures(result))
        _log(f"written to {args.out}")
    if args.detail:
        write_json(Path(args.detail), result)
        _log(f"written to {args.detail}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from trace_rl.report.pages import write_report

    compare = [name.strip() for name in (args.compare or "").split(",") if name.strip()]
    write_report(_settings(args), Path(args.out), _log, compare=compare)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    overrides = list(args.set or [])
    if args.allocator:
        overrides.append(f"trace.allocator={args.allocator}")
    s = load_settings(overrides)  # refuse bad settings before Prefect or any model starts
    from trace_rl.flows.pipeline import preflight
    from trace_rl.store.store import RolloutStore

    named = s.named_at(datetime.now(UTC))  # `run.name = "nightly-{date}"`: filled once, here and in the flow alike
    if named.run.name != s.run.name:
        overrides.append(f"run.name={named.run.name}")
        s = named
    preflight(s)  # bad data files or model path: one line, before the flow
    store = RolloutStore(s.store_url())  # an unreachable, foreign or newer database: one line, before the flow
    try:
        store.refuse_if_written(s.run.name)  # another live writer: one line, before Prefect's traceback
    finally:
        store.close()
    from trace_rl.flows.compat import tie_temporary_server_to_this_process
    from trace_rl.flows.training import run_summary, trace_training

    tie_temporary_server_to_this_process()  # a `kill -9` of this process leaves no Prefect server behind

    start = time.perf_counter()
    from prefect.exceptions import CancelledRun

    from trace_rl.store.lease import RunLeaseError

    try:
        history = trace_training(_secrets_to_environment(overrides))
    except CancelledRun as refused:  # another writer took the run after the check above: still one line
        raise RunLeaseError(str(refused)) from None
    run_dir = s.run.output_dir / s.run.name  # the flow wrote run_dir/metrics.jsonl
    if args.metrics:
        export_metrics(Path(args.metrics), history)
    summary = {
        **run_summary(s, history),
        "wall time": f"{time.perf_counter() - start:.0f}s",
        "rollout database": s.store_url() if not s.store.url.get_secret_value() else "(store.url)",
        "trained policy": str(run_dir / "policy"),
    }
    print()
    width = max(len(k) for k in summary)
    for key, value in summary.items():
        print(f"  {key:<{width}}  {value}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from trace_rl.bench.runner import run_bench, variant_overrides
    from trace_rl.bench.summary import markdown_table
    from trace_rl.store.store import RolloutStore

    variants = [v.strip() for v in args.variants.split(",") if v.strip()] if args.variants else None
    for variant in variants or []:
        load_settings(variant_overrides(variant))  # refuse a bad variant before anything trains
    if args.late and not variants:
        raise SettingsError("--late needs --variants: the late regime runs the chosen variants from a shared pre-run")
    if args.with_warm and not args.late:
        raise SettingsError("--with-warm adds the warm regime to --late K; without --late the warm regime runs alone")
    overrides = _secrets_to_environment(list(args.set or []))  # as `run` does: no password in Prefect's database
    s = load_settings(overrides)  # refuse bad settings before anything trains
    if s.store.url.get_secret_value():
        RolloutStore(s.store_url()).close()  # an unreachable, foreign or newer database: one line, before the flow
    from trace_rl.flows.compat import tie_temporary_server_to_this_process

    tie_temporary_server_to_this_process()  # a `kill -9` of this process leaves no Prefect server behind
    summary = run_bench(
        "quick" if args.quick else "default",
        Path(args.out),
        _log,
        variants,
        args.seeds,
        args.late,
        warm=True if args.with_warm else None,
        overrides=overrides,
        train=not args.summarise_only,
        min_seeds=args.min_seeds,
        resize={
            "iterations": args.iterations,
            "eval_questions": args.eval_questions,
            "eval_samples": args.eval_samples,
            "headroom_every": args.headroom_every,
        },
    )
    print(markdown_table(summary))
    print(f"written to {args.out}/ (summary.json, table.md, runs.jsonl, plots)")
    return 0


def cmd_settings(args: argparse.Namespace) -> int:
    if args.defaults:
        from trace_rl.config.settings import defaults_toml

        print(defaults_toml(), end="")
        return 0
    for section, values in _settings(args).snapshot().items():
        print(f"[{section}]")
        for key, value in values.items():
            print(f"{key} = {json.dumps(value)}")
        print()
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    s = _settings(args)
    overrides = _secrets_to_environment(list(args.set or []))
    from trace_rl.flows.training import trace_training

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


def _args_query(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", choices=["effective-ratio", "calibration", "depth-success", "tree"])
    p.add_argument("tree_id", nargs="?", type=int, help="the tree to draw (query tree)")
    p.add_argument("--run", help="only this run")
    p.add_argument("--bins", type=int, default=10, help="calibration bins")
    p.add_argument("--csv", help="also write the table to this CSV file (a new file, unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="let --csv replace an existing file")


def _args_runs(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", nargs="?", default="list", choices=["list", "delete", "rename"])
    p.add_argument("name", nargs="?", help="the run (delete, rename)")
    p.add_argument("new", nargs="?", help="rename: the new name")
    p.add_argument("--yes", action="store_true", help="delete: really delete")


def _args_sql(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "statement",
        help="one SELECT statement calling only ordinary SQL functions (the allow-list in docs/database.md); it "
        "runs on a read-only connection",
    )
    p.add_argument("--csv", help="also write the result to this CSV file (every row; a new file, unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="let --csv replace an existing file")
    p.add_argument(
        "--limit",
        type=_at_least(0),
        default=10000,
        help="print at most this many rows (default 10000; 0: all); --csv still writes every row",
    )
    p.add_argument(
        "--allow-superuser",
        action="store_true",
        help="PostgreSQL: run even when store.url connects as a superuser (refused otherwise; "
        "`trace-rl db create-reader ROLE` makes a read-only role)",
    )


def _args_db(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "action",
        choices=["upgrade", "status", "backup", "create-reader"],
        help="create-reader: make a PostgreSQL role that can only read the store, for `trace-rl sql`",
    )
    p.add_argument(
        "target",
        nargs="?",
        help="backup: the file to copy the SQLite database to; create-reader: the new role's name",
    )
    p.add_argument(
        "--adopt",
        action="store_true",
        help="upgrade: add trace-rl's tables to a database that already holds other tables",
    )


def _args_run(p: argparse.ArgumentParser) -> None:
    p.add_argument("--allocator", help="shorthand for --set trace.allocator=NAME")
    p.add_argument("--metrics", help="also write train.json and train.csv (per iteration) to this folder")


def _args_evaluate(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", help="write the accuracy figures (EM, F1; sampled and greedy) to this JSON file")
    p.add_argument("--detail", help="write every figure (question counts, success histogram) to this JSON file")
    p.add_argument(
        "--no-store",
        action="store_true",
        help="do not write the per-question outcomes to the rollout database (for `dvc repro`: the database is "
        "the train stage's output)",
    )


def _at_least(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value

    return parse


_positive = _at_least(1)


def _args_bench(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="the CI size: tiny task, one seed, one iteration")
    p.add_argument("--out", default="bench/results", help="folder for runs.jsonl, summary.json and plots")
    p.add_argument(
        "--variants",
        help="only these, comma-separated: allocator names, optionally with a predictor and settings, "
        "e.g. 'uniform,trace+online,uniform@policy.learning_rate=0.0001;policy.kl_coef=0.1'",
    )
    p.add_argument("--seeds", type=int, help="seeds per variant (default: the size's)")
    p.add_argument(
        "--summarise-only",
        action="store_true",
        help="train nothing: write summary.json, table.md and the plots from the runs --out already holds",
    )
    p.add_argument(
        "--min-seeds",
        type=_positive,
        default=5,
        help="the fewest paired seeds a verdict is given on; fewer: 'interim, no verdict' (default: 5)",
    )
    p.add_argument("--iterations", type=_positive, help="training iterations per run (default: the size's, 20)")
    p.add_argument(
        "--eval-questions", type=_positive, help="dev and test questions of each final evaluation (default: 200)"
    )
    p.add_argument("--eval-samples", type=_positive, help="samples per question of the final evaluation (default: 4)")
    p.add_argument(
        "--headroom-every",
        type=_at_least(0),
        help="iterations between oracle-ledger measurements (default: 5; 0: none, e.g. where nothing succeeds)",
    )
    p.add_argument(
        "--with-warm", action="store_true", help="with --late: run the warm regime too, seed by seed (benchmark v2)"
    )
    p.add_argument(
        "--late",
        type=int,
        default=0,
        metavar="K",
        help="late regime: every variant starts from the checkpoint of K iterations of uniform training "
        "(per seed, shared)",
    )


def _args_report(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="report", help="folder for the plots and index.html")
    p.add_argument("--compare", help="other runs of the same store to draw beside it (comma-separated)")


AddArguments = Callable[[argparse.ArgumentParser], object]


def _one_option(flag: str, text: str) -> AddArguments:
    return lambda p: p.add_argument(flag, help=text)


def _csv_options(text: str) -> AddArguments:
    def add(p: argparse.ArgumentParser) -> None:
        p.add_argument("--csv", help=text)
        p.add_argument("--overwrite", action="store_true", help="let --csv replace an existing file")

    return add


# name, function, help, the command's own arguments (besides --set)
COMMANDS: list[tuple[str, Callable[[argparse.Namespace], int], str, AddArguments | None]] = [
    ("run", cmd_run, "prepare the task and model, then run the main job", _args_run),
    ("prepare", cmd_prepare, "build the task data, retrieval index and model only", None),
    ("data", cmd_data, "generate (or read) the task data and build the retrieval index", None),
    (
        "warmstart",
        cmd_warmstart,
        "build and warm-start the default model (or convert/load the preset)",
        _one_option("--metrics", "write the warm start's figures to this JSON file"),
    ),
    ("evaluate", cmd_evaluate, "dev and test accuracy of a run's final policy", _args_evaluate),
    ("report", cmd_report, "plots and an HTML page for a run", _args_report),
    (
        "settings",
        cmd_settings,
        "print the resolved settings",
        lambda p: p.add_argument("--defaults", action="store_true", help="print the defaults as a settings.toml"),
    ),
    ("query", cmd_query, "a named analysis query over the rollout database", _args_query),
    ("sql", cmd_sql, "your own read-only SQL over the rollout database", _args_sql),
    (
        "headroom",
        cmd_headroom,
        "the oracle ledger of a run: its Stage 1 against the oracle's and uniform's",
        _csv_options("also write the ledger to this CSV file (a new file, unless --overwrite)"),
    ),
    (
        "db",
        cmd_db,
        "show or upgrade the rollout database's schema, back it up, or create a read-only role",
        _args_db,
    ),
    ("runs", cmd_runs, "list, delete or rename runs (rows and folders)", _args_runs),
    ("serve", cmd_serve, "serve the training flow as a Prefect deployment (scheduled by settings)", None),
    ("bench", cmd_bench, "train every allocator at equal budget over seeds and report the comparison", _args_bench),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trace-rl", description="Train tool-using LLM agents with TRACE.")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of a known error")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, func, text, arguments in COMMANDS:
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override one setting")
        p.set_defaults(func=func)
        if arguments is not None:
            arguments(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # after parsing: `--help` needs none of the heavy imports
    from sqlalchemy.exc import DBAPIError

    from trace_rl.store.db import StoreError
    from trace_rl.tasks.family import family_errors

    known: tuple[type[BaseException], ...] = (
        SettingsError,
        StoreError,
        *family_errors(),
        ValueError,
        OSError,
        DBAPIError,
        RecursionError,
    )
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(
            "trace-rl: interrupted (what was committed stays; the same command continues a run from its last "
            "committed stage)",
            file=sys.stderr,
        )
        return 130
    except known as err:
        if args.debug:
            raise
        if isinstance(err, SettingsError):
            print(f"trace-rl: {err}", file=sys.stderr)
            return 2
        print(f"trace-rl: {_one_line(err)}  (trace-rl --debug ... shows where)", file=sys.stderr)
        return 1


def _one_line(err: BaseException) -> str:
    """What went wrong, in one line: a database's own message without SQLAlchemy's SQL and links, an
    OS error's reason and file, an input nested too deeply to read."""
    from sqlalchemy.exc import DBAPIError

    if isinstance(err, DBAPIError):
        reason = str(err.orig).strip().splitlines()[0] if str(err.orig).strip() else type(err.orig).__name__
        return f"the rollout database cannot be read: {reason}"
    if isinstance(err, RecursionError):
        return "the input is nested too deeply to read"
    if isinstance(err, OSError) and err.strerror and not isinstance(err, FileNotFoundError | ConnectionError):
        return f"{err.strerror}: {err.filename}" if err.filename else err.strerror
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


if __name__ == "__main__":
    sys.exit(main())
