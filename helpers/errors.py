"""The base of every error the course raises on purpose: ``python -m helpers`` prints these as one line."""


class HelpersError(Exception):
    """A course error whose message says what to do next (no traceback needed)."""
