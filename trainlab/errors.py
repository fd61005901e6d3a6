"""The error for bad input a user can fix (config, flag, dataset, checkpoint).

Entry points print its message as one line and exit with code 2.
"""


class UsageError(Exception):
  """Bad input from the user; the message names the problem and the fix."""
