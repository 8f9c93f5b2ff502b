class GenforgeError(Exception):
    """A user's mistake: the CLI prints it as one line and exits with code 2."""
