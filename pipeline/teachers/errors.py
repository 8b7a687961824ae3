"""The error every teacher problem raises."""


class TeacherError(ValueError):
    """A teacher cannot be set up; the message names the file and what to do about it."""
