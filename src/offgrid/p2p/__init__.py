"""The LAN: node identity and pairing, the mutual-TLS peer listener, DNS-SD discovery,
and models pulled from peers (``p2p.node.Node`` ties them together)."""

from offgrid.p2p.node import Node

__all__ = ["Node"]
