"""Domain errors. Each message says what was wrong and what to do next.

The CLI turns these into ``click.ClickException``; the app into ``gr.Error``.
"""


class FteditError(Exception):
    """Base class for every error ftedit raises on purpose."""


class RequestError(FteditError, ValueError):
    """An edit request is malformed (names the field and the fix)."""


class HParamsError(FteditError, ValueError):
    """Hyperparameters are invalid or do not fit the model."""


class ModelNotFoundError(FteditError):
    """A model spec could not be resolved to weights."""


class StoreError(FteditError):
    """The edit store refused an operation or found a problem."""


class IntegrityError(StoreError):
    """Stored data does not match its checksum or the base model."""


class ImportRefusedError(StoreError):
    """An edit file failed validation; nothing was changed."""


class EditNotFoundError(StoreError):
    """No edit with that id exists in this store."""


class LimitError(FteditError):
    """A deployment limit (``FTEDIT_MAX_*``, rate, time) refused a request; nothing changed."""


class Cancelled(FteditError):
    """The caller (or a visitor who left) cancelled an edit; training stopped, nothing changed."""
