"""The one error type maintenance commands raise: its message is the Job's failure line."""


class MaintenanceError(Exception):
    """What failed and why, in one line, never containing a password."""


def first_line(error: BaseException) -> str:
    """The first line of a (psycopg) error: what PostgreSQL said, without DETAIL/CONTEXT."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
