"""What every `trace-rl` command shares: the log line, settings from `--set` (imported on first use,
so `--help` stays fast) and moving secrets out of the overrides."""

from __future__ import annotations

import argparse
import os
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from trace_rl.config.settings import Settings


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def load_settings(overrides: list[str] | None = None) -> Settings:
    """trace_rl.config.settings.load_settings, imported on first use: it brings torch and every registry."""
    from trace_rl.config.settings import load_settings as load

    return load(overrides)


def split_secrets(overrides: list[str]) -> tuple[list[str], dict[str, str]]:
    from trace_rl.config.settings import split_secrets as split

    return split(overrides)


def settings_of(args: argparse.Namespace) -> Settings:
    return load_settings(list(args.set or []))


def secrets_to_environment(overrides: list[str]) -> list[str]:
    """Move secret overrides (the store URL) into this process's environment, which the flow and
    the flow runs a served deployment starts inherit, so that Prefect never stores them."""
    public, env = split_secrets(overrides)
    os.environ.update(env)
    return public
