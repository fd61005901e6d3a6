"""The error for bad input a user can fix (config, flag, dataset, checkpoint).

It lives in `data/`, the bottom of the package stack, so every layer can raise it. Entry
points print its message as one line and exit with code 2.
"""


class UsageError(Exception):
  """Bad input from the user; the message names the problem and the fix."""
