"""eventtrail's AWS stack (CDK v2): gateway calls -> SQS -> Lambda -> DynamoDB.

:mod:`~eventtrail_infra.stack` only wires the constructs, one per module, each
exposing its resources as attributes: :mod:`~eventtrail_infra.queue` (queue
and DLQ), :mod:`~eventtrail_infra.table`, :mod:`~eventtrail_infra.consumer`
(function and event source), :mod:`~eventtrail_infra.monitoring` (alarms) and
:mod:`~eventtrail_infra.access` (managed policies for the gateway and readers).
:mod:`~eventtrail_infra.settings` reads the settings from CDK context and
:mod:`~eventtrail_infra.asset` builds the Lambda asset; neither imports the
CDK, so this package's import stays light. Importing the package quiets
jsii's Node.js banner (:mod:`~eventtrail_infra.node`) before any of its
modules imports the CDK.
"""

from eventtrail_infra.node import quiet_jsii_node_warnings
from eventtrail_infra.settings import InvalidStackSettings, StackSettings, settings_from_context

quiet_jsii_node_warnings()

__all__ = ["InvalidStackSettings", "StackSettings", "settings_from_context"]
