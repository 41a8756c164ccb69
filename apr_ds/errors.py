"""The exception types every package shares: bad input (the CLI prints its message, no traceback), and an
inference server's error answer (raised by rollout/client.py, handled wherever a server is driven)."""


class UserError(Exception):
    """Something the user can fix: the message says what is wrong and, where possible, how to fix it."""


class ServerError(Exception):
    """The server answered with an error status (or could not be reached after all retries)."""

    def __init__(self, status: int | None, message: str):
        super().__init__(f"HTTP {status}: {message}" if status else message)
        self.status, self.message = status, message

    @property
    def is_length_refusal(self) -> bool:
        """The request did not fit the server's context: SGLang's three refusals (tokenizer_manager.py
        `_validate_one_request`, managers/utils.py `validate_input_length`), which our server gives too."""
        return self.status == 400 and any(phrase in self.message for phrase in _LENGTH_REFUSALS)


_LENGTH_REFUSALS = ("is longer than the model's context length", "exceeds the model's maximum context length",
                    "exceeds the maximum allowed length")
