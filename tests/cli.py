"""Running the real ``eventtrail`` command in a child process."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path


def eventtrail_env(data_dir: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTTRAIL_")}
    env.update({"EVENTTRAIL_DATA_DIR": str(data_dir), "COLUMNS": "200", "NO_COLOR": "1"})
    env.update(extra or {})
    return env


def run(
    data_dir: Path,
    *args: str,
    input: str | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "eventtrail", *args],
        input=input,
        capture_output=True,
        text=True,
        env=eventtrail_env(data_dir, env),
        cwd=cwd or data_dir,
        timeout=timeout,
    )


def spawn(data_dir: Path, *args: str, env: Mapping[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "eventtrail", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=eventtrail_env(data_dir, env),
        cwd=data_dir,
    )
