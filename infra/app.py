"""The CDK app: ``npx cdk synth`` / ``npx cdk deploy`` from this folder.

Settings are context values (``-c stage=prod -c batch_size=50``); see
``eventtrail_infra/settings.py``. The Lambda asset is built before synthesis.
"""

from __future__ import annotations

import sys
from pathlib import Path

# The stack's package lives next to this file, outside the runtime package.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from eventtrail_infra.asset import AssetBuildError
from eventtrail_infra.settings import InvalidStackSettings
from eventtrail_infra.synth import add_stack


def main() -> None:
    # After eventtrail_infra, which quiets jsii's Node.js banner before the CDK starts jsii.
    from aws_cdk import App

    app = App()
    try:
        add_stack(app)
    except (InvalidStackSettings, AssetBuildError) as error:
        sys.exit(f"error: {error}")
    app.synth()


if __name__ == "__main__":
    main()
