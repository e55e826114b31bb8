"""The Lambda asset, built from the package's own files without Docker.

The asset folder holds the ``eventtrail`` package (copied from the installed
sources) and the libraries the handler imports besides boto3 (which the
Lambda runtime provides), installed by pip as wheels for the function's
Python version and architecture. Those libraries are cached in a folder
keyed by the requirements and the platform, so a rebuild only copies files.

``python -m eventtrail_infra.asset [--output DIR]`` builds it from the shell.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import eventtrail
from eventtrail_infra.runtime import PLATFORM, RUNTIME_PYTHON_VERSION

__all__ = [
    "ASSET_ROOT",
    "DEFAULT_ASSET_DIR",
    "AssetBuildError",
    "build_asset",
    "runtime_requirements",
]

INFRA_DIR = Path(__file__).resolve().parent.parent
#: Everything the build writes (gitignored).
ASSET_ROOT = INFRA_DIR / ".asset"
DEFAULT_ASSET_DIR = ASSET_ROOT / "lambda"
#: The distributions the handler imports that the Lambda runtime lacks.
RUNTIME_DISTRIBUTIONS = ("msgspec", "aws-lambda-powertools")
_PACKAGE_JUNK = shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo")


class AssetBuildError(RuntimeError):
    """pip could not install the runtime libraries, or the package is missing."""


def runtime_requirements() -> list[str]:
    """The runtime libraries with the version ranges ``pyproject.toml`` gives
    them (from the installed package's metadata, so there is one place to
    change them)."""
    try:
        declared = importlib.metadata.requires("eventtrail") or []
    except importlib.metadata.PackageNotFoundError:
        declared = []
    requirements = []
    for name in RUNTIME_DISTRIBUTIONS:
        spec = next(
            (line.split(";")[0].strip() for line in declared if _distribution_name(line) == name), name
        )
        requirements.append(spec)
    return requirements


def _distribution_name(requirement: str) -> str:
    name = requirement.split(";")[0]
    for separator in "<>=!~[ ":
        name = name.split(separator)[0]
    return name.strip().lower().replace("_", "-")


def _install_libraries(python_version: str, requirements: list[str]) -> Path:
    """The folder of the runtime libraries, installed once per requirements,
    Python version and platform."""
    key = hashlib.sha256(f"{PLATFORM}|{python_version}|{'|'.join(requirements)}".encode()).hexdigest()
    libraries = ASSET_ROOT / f"libraries-py{python_version}-{key[:16]}"
    if libraries.is_dir():
        return libraries
    ASSET_ROOT.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix="libraries-", dir=ASSET_ROOT))
    command = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "--no-compile",
        "--target",
        str(staging),
        "--platform",
        PLATFORM,
        "--implementation",
        "cp",
        "--python-version",
        python_version,
        "--only-binary=:all:",
        *requirements,
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        reason = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise AssetBuildError(f"pip could not install {' '.join(requirements)}: {reason}")
    shutil.rmtree(staging / "bin", ignore_errors=True)  # console scripts: not used by the handler
    try:
        staging.rename(libraries)
    except OSError:  # built meanwhile by another process: use that one
        shutil.rmtree(staging, ignore_errors=True)
    return libraries


def build_asset(output: Path = DEFAULT_ASSET_DIR, *, python_version: str | None = None) -> Path:
    """Prepare ``output`` as the function's code: the runtime libraries, then
    the ``eventtrail`` package. Replaces what was there; returns ``output``."""
    version = python_version or RUNTIME_PYTHON_VERSION
    package = Path(eventtrail.__file__).resolve().parent
    if not (package / "aws").is_dir():
        raise AssetBuildError(f"{package} has no aws subpackage: is eventtrail installed from its sources?")
    libraries = _install_libraries(version, runtime_requirements())
    output = output.resolve()
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}-", dir=output.parent))
    shutil.copytree(libraries, staging, dirs_exist_ok=True)
    shutil.copytree(package, staging / package.name, ignore=_PACKAGE_JUNK)
    # Replace the old asset in two renames, so that a reader never sees half of one.
    if output.exists():
        retired = output.with_name(f".{output.name}-old-{os.getpid()}")
        output.rename(retired)
        staging.rename(output)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        staging.rename(output)
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--output", type=Path, default=DEFAULT_ASSET_DIR, help="asset folder to prepare")
    arguments = parser.parse_args(argv)
    try:
        print(build_asset(arguments.output))
    except AssetBuildError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
