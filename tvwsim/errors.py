"""The one error type for bad input.

Every check of user input raises `InputError` with a message that names the argument and
what is allowed. The CLI prints that message and exits non-zero without a traceback; the
library lets it propagate (it is a `ValueError`, so callers may catch either).
"""


class InputError(ValueError):
    """Bad input: the message names the argument and the allowed values."""

    def __init__(self, argument: str, problem: str):
        self.argument = argument
        self.problem = problem
        super().__init__(f"{argument}: {problem}")
