"""The demo: two microservices behind the gateway, and traffic for them.

:mod:`~eventtrail.demo.flows` simulates their events without any server (for
tests and benchmarks); :mod:`~eventtrail.demo.services`,
:mod:`~eventtrail.demo.traffic` and :mod:`~eventtrail.demo.stack` run the
real thing, which is what ``eventtrail demo`` does.
"""

from eventtrail.demo.flows import SERVICE_A, SERVICE_B, demo_flows

__all__ = ["SERVICE_A", "SERVICE_B", "demo_flows"]
