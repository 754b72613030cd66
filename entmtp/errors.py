"""User-facing errors.

Anything a user can cause (bad files, bad flags, missing packages) is raised as an
EntmtpError with a message that names the problem; the CLI prints it as one line
on stderr and exits with its `exit_code` (2 for usage mistakes, 1 otherwise).
"""


class EntmtpError(Exception):
    """A problem the user can fix; printed as one line, exit status 1."""

    exit_code = 1


class UsageError(EntmtpError):
    """A wrong flag or argument value; exit status 2."""

    exit_code = 2


class Interrupted(EntmtpError):
    """Ctrl-C (SIGINT) during a command: the message says what was kept and how to
    resume; exit status 130, as a shell reports a process killed by SIGINT."""

    exit_code = 130
