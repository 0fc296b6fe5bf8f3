"""flows: settings, the Prefect training flow, the store wiring and the `trace-rl` command line.

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
    # one line per task run would bury the training progress; states stay visible in the UI
    "PREFECT_LOGGING_LOGGERS_PREFECT_TASK_RUNS_LEVEL": "WARNING",
    # transformers' "Loading weights" / "Writing model shards" bars, dozens per run, among the progress lines
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
}.items():
    os.environ.setdefault(_key, _value)

# bm25s logs each index build at DEBUG, which Prefect's handlers would print among the progress lines;
# it sets its logger to DEBUG when imported, so a level set here would not last: a filter does
logging.getLogger("bm25s").addFilter(lambda record: record.levelno >= logging.INFO)
