"""Settings: one pydantic-settings object from settings.toml, its sections and errors."""
