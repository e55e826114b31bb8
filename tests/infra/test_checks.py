"""The templates pass cfn-lint and cdk-nag's AwsSolutions rules."""

from __future__ import annotations

import pytest
from cfnlint.api import ManualArgs, lint_file  # type: ignore[import-untyped]

from eventtrail_infra.stack import ACKNOWLEDGED_FINDINGS
from tests.infra.conftest import Synthesized

#: W3005 (a DependsOn that a GetAtt already implies): CDK itself makes the
#: function depend on its role's default policy, so that the role can act as
#: soon as the function exists; the GetAtt only orders it after the role.
IGNORED_CFN_LINT_RULES = ["W3005"]


@pytest.mark.parametrize("stage", ["dev", "prod"])
def test_cfn_lint_is_clean(synthesized: Synthesized, stage: str) -> None:
    stack = synthesized.dev if stage == "dev" else synthesized.prod
    matches = lint_file(
        synthesized.template_path(stack),
        config=ManualArgs(ignore_checks=IGNORED_CFN_LINT_RULES, regions=["us-east-1", "eu-west-1"]),
    )
    assert [f"{match.rule.id} {match.message}" for match in matches] == []


def test_cdk_nag_aws_solutions_pass(synthesized: Synthesized) -> None:
    assert synthesized.validation_error is None
    reports = synthesized.validation_report()["pluginReports"]
    aws_solutions = [report for report in reports if report["pluginName"] == "AwsSolutions"]
    assert aws_solutions, "cdk-nag's AwsSolutions checks did not run"
    assert all(report["conclusion"] == "success" for report in aws_solutions), aws_solutions


def test_every_acknowledged_finding_says_why() -> None:
    for finding, reason in ACKNOWLEDGED_FINDINGS.items():
        assert finding.startswith("AwsSolutions::AwsSolutions-")
        assert len(reason.split()) >= 10, f"{finding}: the reason is too thin"
