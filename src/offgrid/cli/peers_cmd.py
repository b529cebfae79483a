"""``offgrid peers pair|list|forget`` and ``offgrid pull PEER MODEL``: the LAN, through the
running server (it holds the node's identity and its peer listener; P2P must be on)."""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer

from offgrid.cli.client import call_server, server_events
from offgrid.cli.common import human_size, print_columns

app = typer.Typer(add_completion=False, no_args_is_help=True)


@app.command()
def pair(
    address: Annotated[
        str | None, typer.Argument(help="The other node's address (host or host:port)")
    ] = None,
    code: Annotated[str | None, typer.Argument(help="The code the other node shows")] = None,
    token: Annotated[
        str | None, typer.Option(help="The fleet's pairing secret instead of a code")
    ] = None,
) -> None:
    """With no address: show a one-time code and wait (five minutes) for a node to pair
    with it. With an address and its code (or --token): pair with that node."""
    from offgrid.errors import BadRequestError

    if address is None:
        _wait_for_pairing()
        return
    if not code and not token:
        raise BadRequestError("Give the code the other node shows (or --token).")
    body = {"address": address, "code": code or "", "token": token or ""}
    peer = call_server("POST", "/api/peers", json=body)
    print(f"Paired with {peer['name']} at {peer['address']} ({_short(peer['fingerprint'])}).")


def _wait_for_pairing() -> None:
    before = {p["fingerprint"] for p in call_server("GET", "/api/peers").get("peers", [])}
    opened = call_server("POST", "/api/peers/pairing")
    state = call_server("GET", "/api/peers")
    port = state["node"]["port"]
    print(f"Pairing code: {opened['code']}  (good for one node, for five minutes)")
    print(f"On the other node: offgrid peers pair <this node's address>:{port} {opened['code']}")
    while True:
        state = call_server("GET", "/api/peers")
        new = [p for p in state["peers"] if p["fingerprint"] not in before]
        if new:
            print(f"Paired with {new[0]['name']} at {new[0]['address']}.")
            return
        if not state["pairing"]["open"]:
            raise typer.Exit(_closed())
        time.sleep(0.5)  # a person is typing the code on the other node


def _closed() -> int:
    print("The pairing window closed (time up, or too many wrong codes): nobody paired.")
    return 1


@app.command("list")
def list_peers() -> None:
    """Paired peers (and whether discovery heard them lately), then unpaired nodes nearby."""
    state = call_server("GET", "/api/peers")
    if not state.get("enabled"):
        print("P2P is off on this node (start the server with OFFGRID_P2P=1).")
        return
    node = state["node"]
    print(f"This node: {node['name']}  port {node['port']}  {_short(node['fingerprint'])}")
    rows = [
        [p["name"], p["address"], _short(p["fingerprint"]), _when(p["paired_at"]), _yes(p["seen"])]
        for p in state["peers"]
    ]
    if rows:
        print_columns(["PEER", "ADDRESS", "FINGERPRINT", "PAIRED", "HEARD"], rows)
    else:
        print("No peer yet: `offgrid peers pair` here, then pair from the other node.")
    heard = [[s["name"], s["address"], _short(s["fingerprint"])] for s in state["discovered"]]
    if heard:
        print("\nNodes heard nearby, not paired:")
        print_columns(["NAME", "ADDRESS", "FINGERPRINT"], heard)


@app.command()
def forget(name: Annotated[str, typer.Argument(help="The peer's name or fingerprint")]) -> None:
    """Trust a peer no more: it is refused from its next request on."""
    peer = call_server("DELETE", f"/api/peers/{name}")
    print(f"Forgot {peer['name']} ({_short(peer['fingerprint'])}).")


def pull(
    peer: Annotated[str, typer.Argument(help="A paired peer's name (offgrid peers list)")],
    model: Annotated[str, typer.Argument(help="The model's id on that peer")],
    limit_rate: Annotated[
        str | None, typer.Option(help="Cap the speed, in bytes per second: 5M, 500K")
    ] = None,
) -> None:
    """Pull a model from a paired peer: resumable, each file checked against the sha256 of
    the peer's signed manifest before it is installed."""
    from offgrid.errors import OffGridError

    body: dict[str, Any] = {"peer": peer, "model": model, "limit_rate": limit_rate}
    last: dict[str, Any] = {}
    for last in server_events("/api/pulls", body):
        done, total = last.get("completed", 0), last.get("total", 0)
        line = f"{last['status']:<11} {last.get('percent', 0):5.1f} %  "
        line += f"{human_size(done)} / {human_size(total)}  {last.get('message', '')}"
        print(f"\r{line[:100]:<100}", end="", flush=True)
    print()
    if last.get("status") not in ("done", "present"):
        raise OffGridError(str(last.get("message") or f"The pull ended {last.get('status')}."))
    print(f"{model} is installed from {peer}.")


def _short(fingerprint: str) -> str:
    return ":".join(fingerprint[i : i + 4] for i in range(0, 16, 4))


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t))


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"
