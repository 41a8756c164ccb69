"""The one exception type for bad input (config, data files, requests). The CLI prints its message, no traceback."""


class UserError(Exception):
    """Something the user can fix: the message says what is wrong and, where possible, how to fix it."""
