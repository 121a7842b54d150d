"""The user's faults, as one family: a request the package refuses raises an ``InputError`` whose message is written
for the person who sent it (no server path, no traceback) and is shown as written. Anything else that goes wrong is
ours: the app logs it with its traceback and shows a short id to quote instead (``ui.errors.user_errors``).

They subclass ``ValueError`` so that callers which already catch that (the CLI, older tests) keep working; a plain
``ValueError`` from inside torch or ultralytics is not an ``InputError`` and so counts as a fault of ours.
"""

from __future__ import annotations


class InputError(ValueError):
    """A request that cannot be served as sent (a setting out of range, an unknown name): the message is for the
    user."""


class UploadError(InputError):
    """An uploaded file that cannot be used at all (not an image, too large, no video stream): the app deletes it at
    once instead of keeping it for a retry."""
