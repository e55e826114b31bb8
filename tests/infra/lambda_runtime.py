"""A stand-in for the Lambda runtime: the runtime's Python version, boto3 (which
the real runtime provides) and the built asset on the path, nothing else.

boto3 is installed once with pip into pytest's cache folder, as plain wheels
for the runtime's Python version, the same way the asset's libraries are. No
virtualenv is needed: the interpreter runs with ``-S`` (none of its own
site-packages) and ``PYTHONPATH`` lists exactly the asset, then boto3.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from eventtrail_infra.runtime import RUNTIME_PYTHON_VERSION

__all__ = ["RUNNER", "find_runtime_python", "install_boto3", "invoke"]

#: Calls the handler with the event on stdin and a minimal context, prints
#: its response and where the package was imported from.
RUNNER = """
import json, sys
from types import SimpleNamespace
import eventtrail
from eventtrail.aws.lambda_handler import handler
context = SimpleNamespace(
    function_name="eventtrail-test", function_version="$LATEST", memory_limit_in_mb=256,
    invoked_function_arn="arn:aws:lambda:us-east-1:123456789012:function:eventtrail-test",
    aws_request_id="test-invocation", log_group_name="test", log_stream_name="test",
    get_remaining_time_in_millis=lambda: 20_000,
)
response = handler(json.load(sys.stdin), context)
print(json.dumps({"response": response, "package": eventtrail.__file__}))
"""


def find_runtime_python() -> str | None:
    """An interpreter of the runtime's version that runs: ``EVENTTRAIL_LAMBDA_PYTHON``,
    a pyenv installation, or ``python3.X`` on PATH (which may be a pyenv shim
    that refuses to run, hence the check)."""
    pyenv_root = Path(os.environ.get("PYENV_ROOT", str(Path.home() / ".pyenv")))
    candidates = [
        os.environ.get("EVENTTRAIL_LAMBDA_PYTHON"),
        *(str(path) for path in sorted(pyenv_root.glob(f"versions/{RUNTIME_PYTHON_VERSION}.*/bin/python3"))),
        shutil.which(f"python{RUNTIME_PYTHON_VERSION}"),
    ]
    for candidate in candidates:
        if candidate and _runs_version(candidate):
            return candidate
    return None


def _runs_version(python: str) -> bool:
    try:
        result = subprocess.run(
            [python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except OSError:
        return False
    return result.returncode == 0 and result.stdout.strip() == RUNTIME_PYTHON_VERSION


def install_boto3(cache_dir: Path) -> Path:
    """boto3 (the version the tests use) for the runtime's Python, installed once."""
    version = importlib.metadata.version("boto3")
    target = cache_dir / f"boto3-{version}-py{RUNTIME_PYTHON_VERSION}"
    if target.is_dir():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix="boto3-", dir=cache_dir))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--target",
            str(staging),
            "--python-version",
            RUNTIME_PYTHON_VERSION,
            "--only-binary=:all:",
            f"boto3=={version}",
        ],
        check=True,
        capture_output=True,
    )
    try:
        staging.rename(target)
    except OSError:  # another session installed it meanwhile
        shutil.rmtree(staging, ignore_errors=True)
    return target


def invoke(
    python: str, asset: Path, boto3_dir: Path, event: Mapping[str, Any], environment: Mapping[str, str]
) -> dict[str, Any]:
    """Run the handler on ``event`` in a fresh runtime-like process."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": os.pathsep.join([str(asset), str(boto3_dir)]),
        "PYTHONNOUSERSITE": "1",
        **environment,
    }
    result = subprocess.run(
        [python, "-S", "-c", RUNNER],
        input=json.dumps(event),
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    output: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return output
