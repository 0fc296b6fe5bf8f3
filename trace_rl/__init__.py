"""trace-rl: the pipeline around trace_core. Its packages are layered; each imports only those above it
in this list (tests/test_architecture.py checks it):

    tasks    a task family whole: its settings sections, data, tools, environment, featurizer, scorer
    config   the one `Settings` (pydantic-settings) and its sections; store: the rollout database
    flows    the Prefect training flow: its stages, checkpoints and sharding
    report   evaluating a run, its figures and report page, the DVC metrics files
    bench    the allocator benchmark and its summary
    cli      the `trace-rl` command line

Prefect's defaults are set here, before any module imports Prefect: no analytics and no calls
beyond loopback, and a start-up timeout for the temporary API server above Prefect's 20 s, which
a loaded 2-core machine can exceed; and no library progress bars in the job's log. Each can still
be overridden from the environment.
"""

import logging
import os

for _key, _value in {
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    # transformers' "Loading weights" / "Writing model shards" bars, dozens per run, among the progress lines
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
}.items():
    os.environ.setdefault(_key, _value)

# One line per task run ("Finished in state Completed()") would bury the training progress: the task-run
# logger passes warnings, errors and the retry lines ("Task run failed ... - Retry 1/2 will start 2 second(s)
# from now"), to the console and to the run's log in Prefect's UI alike; states stay visible in the UI.
logging.getLogger("prefect.task_runs").addFilter(
    lambda record: record.levelno >= logging.WARNING or "Retry " in str(record.msg)
)

# bm25s logs each index build at DEBUG, which Prefect's handlers would print among the progress lines;
# it sets its logger to DEBUG when imported, so a level set here would not last: a filter does
logging.getLogger("bm25s").addFilter(lambda record: record.levelno >= logging.INFO)
