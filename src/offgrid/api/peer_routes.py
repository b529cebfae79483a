"""The LAN, as the admin sees it (``offgrid peers …``, the dashboard): this node, its paired
peers, the nodes heard nearby, pairing, forgetting. Pulls from a peer go through
``POST /api/pulls`` with ``peer`` and ``model`` (``hub_routes``), like any pull.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from offgrid.api.deps import RuntimeDep

__all__ = ["router"]

router = APIRouter(prefix="/api/peers")


class PairRequest(BaseModel):
    """Pair with the node at ``address`` (host or host:port) with the ``code`` it shows,
    or the fleet's ``token``."""

    address: str = Field(min_length=1, max_length=300)
    code: str = Field(default="", max_length=200)
    token: str = Field(default="", max_length=200, repr=False)


@router.get("")
async def peers(runtime: RuntimeDep) -> dict[str, Any]:
    """This node, its peers (and whether each was heard lately), nodes heard not paired."""
    if runtime.p2p is None:
        return {"enabled": False, "peers": [], "discovered": []}
    return runtime.p2p.state()


@router.post("/pairing")
async def open_pairing(runtime: RuntimeDep) -> dict[str, Any]:
    """Let one node pair with this one in the next five minutes: the code to give it."""
    return runtime.lan().pairing.open()


@router.delete("/pairing")
async def close_pairing(runtime: RuntimeDep) -> dict[str, Any]:
    node = runtime.lan()
    node.pairing.close()
    return node.pairing.state()


@router.post("", status_code=201)
async def pair(body: PairRequest, runtime: RuntimeDep) -> dict[str, Any]:
    """Pair with another node: both prove they know its code, then pin each other."""
    peer = await runtime.lan().pair_with(body.address, body.code or body.token)
    return peer.public()


@router.delete("/{name}")
async def forget(name: str, runtime: RuntimeDep) -> dict[str, Any]:
    """Trust a peer no more: it is refused from its next request on."""
    return runtime.lan().forget(name).public()
