"""The package's errors."""


class ConfigError(ValueError):
    """A setting is unknown or has a value that is not allowed; the message says which and why."""
