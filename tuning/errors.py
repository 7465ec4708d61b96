"""Errors a user can act on. The worker maps them to a failed job of kind
``user_error``; anything else is an internal ``error``."""


class TuningError(Exception):
    """Base class: the message says what is wrong and what to do."""


class ConfigError(TuningError):
    """One or more settings are invalid. ``errors`` maps field -> message."""

    def __init__(self, errors: dict[str, str]):
        self.errors = dict(errors)
        super().__init__("; ".join(f"{field}: {msg}" for field, msg in self.errors.items()))


class DatasetError(TuningError):
    """A data file cannot be used. ``row`` is 1-based (the line for JSONL,
    the data row for CSV, not counting the header); ``field`` is a column."""

    def __init__(self, message: str, *, file: str = "", row: int | None = None, field: str = ""):
        self.file, self.row, self.field, self.reason = file, row, field, message
        where = ", ".join(
            part
            for part in (file, f"row {row}" if row is not None else "", f"field '{field}'" if field else "")
            if part
        )
        super().__init__(f"{where}: {message}" if where else message)


class ModelError(TuningError):
    """A base model cannot be found or loaded."""


class ResourceError(TuningError):
    """The job does not fit the machine (out of memory, no GPU for a GPU-only option)."""
