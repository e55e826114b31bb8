"""Settings of the whole test suite."""

from __future__ import annotations

import signal

import pytest


def pytest_configure(config: pytest.Config) -> None:
    # A suite started as a background job (`cmd &` in a script, nohup) has
    # SIGINT ignored, and every process it starts inherits that: the tests
    # that press Ctrl-C on a demo or `up` would find it ignored, as POSIX
    # asks of background jobs. They stand for a terminal's foreground, so
    # the suite takes SIGINT back (and its children start with the default).
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
