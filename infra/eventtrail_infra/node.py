"""The Node.js releases the CDK runs on, and jsii's warnings about them.

jsii (the bridge from Python to the CDK's JavaScript) prints a banner about
the Node.js release on every start of every process. Which releases are
supported is said once, by ``make setup`` and the README; the banner is
silenced for the end-of-life releases that still run the stack, and stays
for any release jsii knows to be broken or has not tested.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

__all__ = ["END_OF_LIFE_NODE_MAJORS", "SUPPORTED_NODE_MAJORS", "quiet_jsii_node_warnings"]

#: Node.js LTS releases that are not end-of-life (the Makefile's check agrees).
SUPPORTED_NODE_MAJORS = (22, 24)
#: End-of-life releases that still synthesize and deploy the stack.
END_OF_LIFE_NODE_MAJORS = (18, 20)


def quiet_jsii_node_warnings(environ: MutableMapping[str, str] = os.environ) -> None:
    """Silence jsii's end-of-life and deprecation banners, unless the
    environment already decides; call before ``aws_cdk`` is imported (its
    import starts jsii's Node.js process, which reads these variables)."""
    environ.setdefault(
        "JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", ",".join(map(str, END_OF_LIFE_NODE_MAJORS))
    )
    environ.setdefault("JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION", "1")
