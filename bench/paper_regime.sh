#!/usr/bin/env bash
# The decisive benchmark (bench/results/paper_regime/PREREGISTRATION.md), in the order registered there:
# batch 1 (seeds 0-4: uniform, trace, prompt_only, trace with the wide root split), then batch 2 (seeds 5-11 of
# uniform, trace and prompt_only; seeds 0-4 of dynamic_sampling and random_branch), then today's regime for
# contrast (seeds 0-4 of the five allocators). Every call resumes from the runs its folder already holds, so the
# script can be stopped and restarted at any point. Run from the repository root with its venv:
#   bash bench/paper_regime.sh
set -euo pipefail
PY="${PY:-.venv/bin/python}"
bench() { "$PY" -m trace_rl.cli bench --headroom-every 0 "$@"; }
export TRACE_SETTINGS_FILE=configs/paper_regime.toml
bench --variants 'uniform,trace,prompt_only,trace@trace.root_split=wide' --seeds 5 --out bench/results/paper_regime
bench --variants 'uniform,trace,prompt_only' --seeds 12 --out bench/results/paper_regime
bench --variants 'dynamic_sampling,random_branch' --seeds 5 --out bench/results/paper_regime
unset TRACE_SETTINGS_FILE
bench --variants 'uniform,trace,prompt_only,dynamic_sampling,random_branch' --seeds 5 --out bench/results/today_regime
