"""The command line's known errors, importable without torch, Prefect or the settings' registries
(so `trace-rl --help` and every one-line error stay fast)."""


class SettingsError(ValueError):
    """Settings could not be read or validated; the message names each bad key and why."""
