"""The one exception type that command-line tools turn into a single `error: ...` line."""


class UserError(Exception):
    """Bad input a user can fix: the message names the file (or option) and the fix.

    The CLIs print `error: <message>` on stderr and exit with status 2, without a traceback.
    Library code raises it for anything caused by the user's files or arguments; bugs stay
    ordinary exceptions so that they keep their tracebacks.
    """
