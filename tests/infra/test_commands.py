"""``eventtrail infra`` and the CDK CLI: real processes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from eventtrail.aws.schema import INDEX_SHARDS_TAG, READ_MODELS_SUFFIX
from eventtrail_infra.synth import cdk_json_context
from tests.cli import eventtrail_env, run
from tests.infra.conftest import INFRA, ROOT

CDK = ROOT / "node_modules" / ".bin" / "cdk"


def test_cli_does_not_load_the_cdk_unless_asked() -> None:
    result = subprocess.run(
        [sys.executable, "-c", "import sys, eventtrail.cli; print('aws_cdk' in sys.modules)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.strip() == "False"


def test_missing_cdk_extra_is_one_line(tmp_path: Path) -> None:
    # aws_cdk made unimportable, as in an installation without the extra.
    script = (
        "import sys; sys.modules['aws_cdk'] = None; sys.argv = ['eventtrail', *sys.argv[1:]];"
        " from eventtrail.cli import main; main()"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, "infra", "synth", "--output", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert (
        result.stderr.strip() == "error: the infra commands need the cdk extra: pip install 'eventtrail[cdk]'"
    )


def test_bad_setting_is_one_line(tmp_path: Path) -> None:
    result = run(tmp_path, "infra", "synth", "--output", str(tmp_path / "out"), "-c", "stag=prod")
    assert result.returncode == 2
    assert result.stderr.strip() == "error: invalid stack setting: Object contains unknown field `stag`"
    result = run(tmp_path, "infra", "synth", "--output", str(tmp_path / "out"), "-c", "stage")
    assert result.returncode == 2
    assert "expected KEY=VALUE" in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_synth_writes_the_template(tmp_path: Path) -> None:
    # No JSII_SILENCE_* from this process: the command keeps jsii quiet by itself.
    env = {key: value for key, value in eventtrail_env(tmp_path).items() if not key.startswith("JSII_")}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "eventtrail",
            "infra",
            "synth",
            "--output",
            str(tmp_path / "out"),
            "--asset-dir",
            str(tmp_path / "asset"),
            "-c",
            "stage=prod",
            "-c",
            "table_name=audit-events",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    template_path = Path(result.stdout.strip())
    assert template_path == tmp_path / "out" / "eventtrail.template.json"
    resources = json.loads(template_path.read_text())["Resources"]
    (table,) = (
        resource
        for resource in resources.values()
        if resource["Type"] == "AWS::DynamoDB::Table"
        and resource["Properties"]["TableName"] == "audit-events"
    )
    assert table["DeletionPolicy"] == "Retain"
    assert (tmp_path / "asset" / "eventtrail" / "aws" / "schema.py").is_file()
    assert (tmp_path / "asset" / "msgspec").is_dir()


@pytest.mark.slow
@pytest.mark.skipif(not CDK.exists() or shutil.which("node") is None, reason="npm's aws-cdk is not installed")
def test_cdk_cli_synthesizes_with_cdk_json(tmp_path: Path) -> None:
    # No JSII_SILENCE_* from outside: the project's own files keep the output quiet.
    env = {key: value for key, value in os.environ.items() if not key.startswith("JSII_")}
    env["CDK_DISABLE_TELEMETRY"] = "true"
    result = subprocess.run(
        [str(CDK), "synth", "--quiet", "--no-notices", "--output", str(tmp_path), "-c", "index_shards=16"],
        cwd=INFRA,
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    # Neither jsii's Node.js banner nor the CDK's unconfigured feature flags notice.
    assert result.stderr == ""
    assert result.stdout == ""
    template = json.loads((tmp_path / "eventtrail.template.json").read_text())
    (table,) = (
        resource
        for resource in template["Resources"].values()
        if resource["Type"] == "AWS::DynamoDB::Table"
        and not str(resource["Properties"].get("TableName", "")).endswith(READ_MODELS_SUFFIX)
    )
    assert {"Key": INDEX_SHARDS_TAG, "Value": "16"} in table["Properties"]["Tags"]


def test_cdk_json_sets_every_recommended_feature_flag() -> None:
    """What aws-cdk-lib recommends (the list `cdk init` writes) is what
    cdk.json sets: the CDK CLI then has no unconfigured flag to warn about,
    and a new flag after an upgrade fails here first."""
    import aws_cdk

    (package,) = (Path(aws_cdk.__file__).parent / "_jsii").glob("aws-cdk-lib@*.jsii.tgz")
    with tarfile.open(package) as archive:
        member = archive.extractfile("package/recommended-feature-flags.json")
        assert member is not None
        recommended: dict[str, object] = json.load(member)
    context = cdk_json_context()
    assert len(recommended) > 50
    assert {flag: context.get(flag) for flag in recommended} == recommended
