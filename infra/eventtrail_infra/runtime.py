"""The function's runtime, in one place for the stack, the asset build and the tests.

Python 3.13 rather than the newest runtime: the tests run the built asset with
a local interpreter of the same version, which proves its native wheels load.
This module imports nothing from the CDK, so the asset build stays light.
"""

from __future__ import annotations

__all__ = ["HANDLER", "PLATFORM", "RUNTIME_PYTHON_VERSION"]

RUNTIME_PYTHON_VERSION = "3.13"
#: pip's platform tag for wheels that load on Lambda's x86_64 Amazon Linux (glibc 2.17+).
PLATFORM = "manylinux2014_x86_64"
#: The handler inside the asset: the ``eventtrail`` package's own module.
HANDLER = "eventtrail.aws.lambda_handler.handler"
