"""The LAN (issue 17): real servers in network namespaces joined by a bridge (tests/lan.py),
each with P2P on: discovery, pairing and its refusals, mutual TLS, pulls that resume and
verify, forgetting; and with P2P off, nothing listening beyond loopback.

Node A offers models; node B pulls them. The tests share the two servers and run in file
order (pairing before pulling), each one setting up what it needs from the state before.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests

from conftest import SLOWDOWN, STARTER_ID, Server, link_models, wait_for
from lan import FLEET_TOKEN, Lan, Node, available, start_loopback_node, start_node_server
from offgrid.engine.build import EngineBinary
from offgrid.engine.process import free_port
from offgrid.errors import BadRequestError
from offgrid.models.keys import Keys
from offgrid.models.starter import STARTER
from offgrid.p2p.identity import (
    PAIRING_NAME,
    Identity,
    checked_cert,
    client_context,
    server_context,
    signed_by,
)
from offgrid.p2p.pairing import Pairing, derive_key, holding, new_code, proof

P2P_PORT = 11612
RERANKER = "minilm-random-rank-head.F16"  # 45 MB: the copy whose byte gets flipped
FEDERATED = "only-on-a.Q4_1"  # the starter under another id, which B never pulls
SPLIT = "split-me.Q4_1"  # the starter again: A spreads it over B's RPC worker


@pytest.fixture(scope="module")
def lan() -> Iterator[Lan]:
    reason = available()
    if reason:
        pytest.skip(reason)
    with Lan(2) as built:
        yield built


class Nodes:
    """The two servers and how to (re)start them."""

    def __init__(self, lan: Lan, tmp: Path, store: Path, binary: EngineBinary) -> None:
        self.lan, self.tmp, self.store, self.binary = lan, tmp, store, binary
        for name in ("a", "b"):
            (tmp / name / "home").mkdir(parents=True)
        link_models(
            store,
            tmp / "a" / "models",
            {
                STARTER.file_name: STARTER.file_name,
                f"{FEDERATED}.gguf": STARTER.file_name,
                f"{SPLIT}.gguf": STARTER.file_name,
            },
        )
        shutil.copy(store / f"{RERANKER}.gguf", tmp / "a" / "models")  # its own inode
        (tmp / "b" / "models").mkdir()
        self.a = self.start("a")
        self.b = self.start("b")
        self.up_at = time.monotonic()

    def start(self, name: str) -> Server:
        node = self.lan.nodes[0 if name == "a" else 1]
        return start_node_server(
            node,
            self.tmp / name,
            self.tmp / name / "models",
            self.binary,
            OFFGRID_P2P="1",
            OFFGRID_FEDERATION="1",
            OFFGRID_NODE_NAME=f"node-{name}",
            OFFGRID_SPLIT_MODELS=SPLIT,
            OFFGRID_RPC_WORKER="1" if name == "b" else "0",
        )

    @property
    def a_address(self) -> str:
        return f"{self.lan.nodes[0].ip}:{P2P_PORT}"


@pytest.fixture(scope="module")
def nodes(
    lan: Lan,
    tmp_path_factory: pytest.TempPathFactory,
    model_store: Path,
    engine_binary: EngineBinary,
) -> Iterator[Nodes]:
    built = Nodes(lan, tmp_path_factory.mktemp("lan"), model_store, engine_binary)
    yield built
    for srv in (built.a, built.b):
        srv.stop()


def api(srv: Server, method: str, path: str, **kw: Any) -> requests.Response:
    return requests.request(method, f"{srv.url}{path}", timeout=60, **kw)


def peers(srv: Server) -> dict[str, Any]:
    state: dict[str, Any] = api(srv, "GET", "/api/peers").json()
    return state


def pair(nodes: Nodes) -> None:
    """B pairs with A (A shows a code, B is given it), unless they are paired already."""
    if any(p["name"] == "node-a" for p in peers(nodes.b)["peers"]):
        return
    code = api(nodes.a, "POST", "/api/peers/pairing").json()["code"]
    got = api(nodes.b, "POST", "/api/peers", json={"address": nodes.a_address, "code": code})
    assert got.status_code == 201, got.text


def keys_of(srv: Server) -> tuple[Path, Path]:
    folder = Path(srv.env["HOME"]) / ".local" / "share" / "offgrid" / "keys"
    return folder / "node.crt", folder / "node.key"


def tls_get(
    node: Node, address: str, path: str, cert: tuple[Path, Path] | None, sni: str | None
) -> str:
    """One HTTPS GET from inside ``node``: the status line, or what broke the connection."""
    host, port = address.split(":")

    def run() -> str:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        if cert:
            ctx.load_cert_chain(*cert)
        try:
            with (
                socket.create_connection((host, int(port)), timeout=10) as raw,
                ctx.wrap_socket(raw, server_hostname=sni) as tls,
            ):
                tls.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
                first = tls.recv(200).split(b"\r\n")[0].decode()
                return first or "refused: closed without an answer"
        except (ssl.SSLError, OSError) as exc:
            return f"refused: {type(exc).__name__}"

    return node.call(run)


# -- pairing, in pieces (no network) ----------------------------------------------------------


def test_a_code_is_typed_loosely_and_works_once() -> None:
    pairing = Pairing()
    code = pairing.open()["code"]
    server, client, nonce = "s" * 64, "c" * 64, "n1"
    typed = code.lower().replace("-", " ").replace("0", "o")  # as a person might type it
    key = derive_key(typed, server)
    assert pairing.check(server, client, nonce, proof(key, "client", server, client, nonce)) == key
    assert not pairing.accepts(), "a code pairs one node only"


def test_five_wrong_codes_close_the_window_and_a_short_token_is_refused() -> None:
    from offgrid.errors import ConfigError, PermissionDeniedError

    pairing = Pairing()
    pairing.open()
    server, client = "s" * 64, "c" * 64
    for _ in range(5):
        wrong = proof(derive_key(new_code(), server), "client", server, client, "n")
        with pytest.raises(PermissionDeniedError, match="Wrong pairing code"):
            pairing.check(server, client, "n", wrong)
    assert not pairing.accepts()
    with pytest.raises(ConfigError):
        Pairing("too-short")


# -- on the LAN -------------------------------------------------------------------------------


def test_discovery_finds_the_peer_within_5_s(nodes: Nodes) -> None:
    def heard() -> bool:
        state = peers(nodes.a)
        return any(s["name"] == "node-b" for s in state["discovered"] + state["peers"])

    wait_for(heard, 5, "A to hear B on the LAN")
    took = time.monotonic() - nodes.up_at
    print(f"discovery: B heard by A {took:.2f} s after both servers answered")
    assert took < 5 * SLOWDOWN
    seen = next(s for s in peers(nodes.a)["discovered"] if s["name"] == "node-b")
    assert seen["address"] == f"{nodes.lan.nodes[1].ip}:{P2P_PORT}"
    assert "models" not in seen, "no model list goes out in the clear"


def test_an_unpaired_node_is_refused(nodes: Nodes) -> None:
    b = nodes.lan.nodes[1]
    a_state = peers(nodes.a)
    assert a_state["peers"] == [] and a_state["pairing"]["open"] is False
    # B's own certificate, not pinned by A: the handshake fails
    assert tls_get(b, nodes.a_address, "/p2p/manifest", keys_of(nodes.b), None).startswith(
        "refused"
    )
    # no certificate: through the handshake, but to nothing but pairing
    assert tls_get(b, nodes.a_address, "/p2p/manifest", None, None).endswith("403 Forbidden")
    # asking to pair while A has no window open: refused in the handshake
    assert tls_get(b, nodes.a_address, "/p2p/hello", None, PAIRING_NAME).startswith("refused")
    # and through B's API: wrong code, and no window
    got = api(nodes.b, "POST", "/api/peers", json={"address": nodes.a_address, "code": "ABCD-EFGH"})
    assert got.status_code == 403 and "no pairing window" in got.json()["error"]["message"]
    api(nodes.a, "POST", "/api/peers/pairing")
    got = api(nodes.b, "POST", "/api/peers", json={"address": nodes.a_address, "code": "ABCD-EFGH"})
    assert got.status_code == 403 and "Wrong pairing code" in got.json()["error"]["message"]
    assert peers(nodes.a)["pairing"]["tries_left"] == 4
    assert peers(nodes.a)["peers"] == [] and peers(nodes.b)["peers"] == []
    got = api(nodes.b, "POST", "/api/pulls", json={"peer": "node-a", "model": STARTER_ID})
    assert got.status_code == 404
    api(nodes.a, "DELETE", "/api/peers/pairing")


def test_pairing_pins_both_ways_and_the_code_works_once(nodes: Nodes) -> None:
    code = api(nodes.a, "POST", "/api/peers/pairing").json()["code"]
    body = {"address": nodes.a_address, "code": code}
    got = api(nodes.b, "POST", "/api/peers", json=body)
    assert got.status_code == 201, got.text
    a_seen_by_b = got.json()
    assert a_seen_by_b["name"] == "node-a"
    assert a_seen_by_b["fingerprint"] == peers(nodes.a)["node"]["fingerprint"]
    b_seen_by_a = peers(nodes.a)["peers"]
    assert [p["name"] for p in b_seen_by_a] == ["node-b"]
    assert b_seen_by_a[0]["fingerprint"] == peers(nodes.b)["node"]["fingerprint"]
    assert b_seen_by_a[0]["address"] == f"{nodes.lan.nodes[1].ip}:{P2P_PORT}"
    again = api(nodes.b, "POST", "/api/peers", json=body)
    assert again.status_code == 403
    # now B's certificate opens A's listener
    b = nodes.lan.nodes[1]
    assert tls_get(b, nodes.a_address, "/p2p/hello", keys_of(nodes.b), None).endswith("200 OK")


def _watch(srv: Server, body: dict[str, Any], states: list[dict[str, Any]]) -> None:
    """Start a pull and keep every state it sends (in a thread)."""
    with requests.post(f"{srv.url}/api/pulls", json=body, stream=True, timeout=600) as resp:
        for line in resp.iter_lines():
            if line.startswith(b"data: "):
                states.append(json.loads(line[6:]))


def test_a_pull_cut_halfway_resumes_and_verifies(nodes: Nodes) -> None:
    pair(nodes)
    states: list[dict[str, Any]] = []
    body = {"peer": "node-a", "model": STARTER_ID, "limit_rate": "8M"}
    watcher = threading.Thread(target=_watch, args=(nodes.b, body, states), daemon=True)
    watcher.start()
    wait_for(lambda: states and states[-1]["percent"] >= 30, 60, "the pull to pass 30 %")
    nodes.a.stop(signal.SIGKILL)  # the serving node dies mid-file
    wait_for(
        lambda: (
            any("retrying" in s["message"] for s in states) or states[-1]["status"] != "downloading"
        ),
        60,
        "B to notice the cut",
    )
    cut_at = states[-1]["completed"]
    assert states[-1]["status"] == "downloading", states[-1]
    nodes.a = nodes.start("a")  # back, same identity and peers
    watcher.join(timeout=120 * SLOWDOWN)
    final = states[-1]
    assert final["status"] == "done", final
    assert 0.3 * STARTER.size <= cut_at < STARTER.size
    pulled = Path(nodes.b.env["OFFGRID_MODELS_DIR"]) / STARTER.file_name
    assert hashlib.sha256(pulled.read_bytes()).hexdigest() == STARTER.sha256
    model = api(nodes.b, "GET", f"/api/models/{STARTER_ID}").json()
    assert model["origin"]["kind"] == "peer" and model["origin"]["peer"] == "node-a"
    assert not [p for p in pulled.parent.iterdir() if p.name.startswith(".")], "no partial left"


def test_a_flipped_byte_on_the_serving_side_is_refused(nodes: Nodes) -> None:
    pair(nodes)
    served = Path(nodes.a.env["OFFGRID_MODELS_DIR"]) / f"{RERANKER}.gguf"
    verified = api(nodes.a, "POST", "/api/models/verify", json={"models": [RERANKER]})
    assert verified.status_code == 200, verified.text  # its hash recorded: the manifest's
    before = served.stat()
    with served.open("r+b") as fh:  # rot: one byte, the file's times kept
        fh.seek(before.st_size // 2)
        byte = fh.read(1)
        fh.seek(-1, os.SEEK_CUR)
        fh.write(bytes([byte[0] ^ 0xFF]))
    os.utime(served, ns=(before.st_atime_ns, before.st_mtime_ns))
    got = api(nodes.b, "POST", "/api/pulls", json={"peer": "node-a", "model": RERANKER})
    final = [json.loads(line[6:]) for line in got.iter_lines() if line.startswith(b"data: ")][-1]
    assert final["status"] == "failed" and "arrived damaged" in final["message"], final
    folder = Path(nodes.b.env["OFFGRID_MODELS_DIR"])
    assert not [p for p in folder.iterdir() if RERANKER in p.name], "nothing of it is kept"
    assert RERANKER not in [m["id"] for m in api(nodes.b, "GET", "/api/models").json()["models"]]


def test_federation_answers_from_the_peers_engine_streamed(nodes: Nodes) -> None:
    pair(nodes)
    wait_for(
        lambda: any(m["id"] == FEDERATED for m in api(nodes.b, "GET", "/v1/models").json()["data"]),
        15,
        "B to list A's models (its federation asks every 5 s)",
    )
    listed = api(nodes.b, "GET", "/v1/models").json()["data"]
    card = next(m for m in listed if m["id"] == FEDERATED)
    assert card["peer"] == "node-a"
    pieces = []
    with nodes.b.client().chat.completions.with_streaming_response.create(
        model=FEDERATED,
        messages=[{"role": "user", "content": "Say hello."}],
        max_tokens=16,
        stream=True,
    ) as resp:
        assert resp.headers["x-offgrid-peer"] == "node-a"
        for chunk in resp.parse():
            pieces += [c.delta.content or "" for c in chunk.choices]
    assert "".join(pieces).strip()
    assert [m["id"] for m in nodes.a.ps()] == [FEDERATED], "A's engine answered"
    assert FEDERATED not in [m["id"] for m in nodes.b.ps()]
    load = next(p for p in peers(nodes.b)["peers"] if p["name"] == "node-a")["load"]
    assert FEDERATED in load["models"] and load["latency_ms"] is not None
    # the peer's own errors come back as it gave them
    bad = api(nodes.b, "POST", "/v1/chat/completions", json={"model": FEDERATED, "messages": 5})
    assert bad.status_code == 400 and bad.headers["x-offgrid-peer"] == "node-a", bad.text
    # a model no one has is this node's 404
    none = api(
        nodes.b, "POST", "/v1/chat/completions", json={"model": "nobody-has-it", "messages": []}
    )
    assert none.status_code == 404 and "x-offgrid-peer" not in none.headers


def _engine_log(srv: Server, model: str) -> str:
    """The engine's log of its last start: its command line first."""
    return (Path(srv.env["OFFGRID_CACHE_DIR"]) / "logs" / f"engine-{model}.log").read_text()


def _rpc_server(srv: Server) -> psutil.Process:
    found = [c for c in psutil.Process(srv.proc.pid).children() if "rpc-server" in c.name()]
    assert len(found) == 1, found
    return found[0]


def test_a_split_model_puts_layers_on_the_peers_rpc_worker(nodes: Nodes) -> None:
    pair(nodes)
    wait_for(
        lambda: (
            next(p for p in peers(nodes.a)["peers"] if p["name"] == "node-b")
            .get("load", {})
            .get("rpc_free")
        ),
        15,
        "A to hear of B's RPC worker",
    )
    reply = nodes.a.client().chat.completions.create(
        model=SPLIT, messages=[{"role": "user", "content": "Say hello."}], max_tokens=8
    )
    assert reply.choices[0].message.content
    log = _engine_log(nodes.a, SPLIT)
    command = log.splitlines()[0]
    assert "--rpc 127.0.0.1:" in command  # a tunnel's port here, never B's worker itself
    offloaded = [line for line in log.splitlines() if "offloaded" in line]
    on_worker = [line for line in log.splitlines() if "RPC0[" in line and "model buffer" in line]
    assert offloaded and on_worker, log[-3000:]
    layers, total = offloaded[0].split("offloaded ")[1].split(" ")[0].split("/")
    assert 0 < int(layers) <= int(total)
    assert _rpc_server(nodes.b).is_running()


def test_a_worker_lost_mid_stream_gives_an_error_event_and_the_next_request_runs_here(
    nodes: Nodes,
) -> None:
    pair(nodes)
    if SPLIT not in [m["id"] for m in nodes.a.ps()]:
        test_a_split_model_puts_layers_on_the_peers_rpc_worker(nodes)
    worker = _rpc_server(nodes.b)
    events: list[bytes] = []
    body = {
        "model": SPLIT,
        "messages": [{"role": "user", "content": "Count from 1 to 500, one per line."}],
        "max_tokens": 2000,
        "ignore_eos": True,  # the engine's own option: no early end, whatever it samples
        "stream": True,
    }
    with requests.post(
        f"{nodes.a.url}/v1/chat/completions", json=body, stream=True, timeout=120
    ) as resp:
        for line in resp.iter_lines():
            if line.startswith(b"data: "):
                events.append(line)
                if len(events) == 5:
                    worker.kill()  # the worker's box loses it mid-stream
    assert len(events) > 5 and b'"error"' in events[-1], events[-3:]
    reply = nodes.a.client().chat.completions.create(
        model=SPLIT, messages=[{"role": "user", "content": "Say hello."}], max_tokens=8
    )
    assert reply.choices[0].message.content
    assert "--rpc" not in _engine_log(nodes.a, SPLIT).splitlines()[0], "it runs here alone"


def test_doctor_reports_the_peers(nodes: Nodes) -> None:
    pair(nodes)
    b = nodes.lan.nodes[1]
    env = {**nodes.b.env, "OFFGRID_PORT": nodes.b.env["OFFGRID_PORT"]}
    done = b.exec(
        [sys.executable, "-m", "offgrid", "doctor"], env=env, capture_output=True, text=True
    )
    line = next(x for x in done.stdout.splitlines() if "peers" in x)
    assert "node-a" in line and "1 paired" in line, done.stdout


def test_a_forgotten_peer_is_refused(nodes: Nodes) -> None:
    pair(nodes)
    got = api(nodes.a, "DELETE", "/api/peers/node-b")
    assert got.status_code == 200 and peers(nodes.a)["peers"] == []
    b = nodes.lan.nodes[1]
    assert tls_get(b, nodes.a_address, "/p2p/hello", keys_of(nodes.b), None).startswith("refused")
    got = api(
        nodes.b, "POST", "/api/pulls", json={"peer": "node-a", "model": STARTER_ID, "stream": False}
    )
    # refused in the handshake (a new connection) or at the request (a kept one)
    assert got.status_code in (403, 503) and "trust" in got.json()["error"]["message"], got.text
    assert api(nodes.b, "DELETE", "/api/peers/node-a").status_code == 200


def test_with_p2p_off_nothing_listens_beyond_loopback(server: Server) -> None:
    listening = [
        c.laddr
        for c in psutil.Process(server.proc.pid).net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN
    ]
    assert listening and all(addr.ip in ("127.0.0.1", "::1") for addr in listening), listening
    assert api(server, "GET", "/api/peers").json()["enabled"] is False
    got = api(server, "POST", "/api/peers/pairing")
    assert got.status_code == 400 and "OFFGRID_P2P=1" in got.json()["error"]["message"]


def test_a_fleet_token_pairs_through_the_cli_and_forget_undoes_it(
    tmp_path: Path, engine_binary: EngineBinary
) -> None:
    """On loopback (no namespaces, no discovery): B pairs with A by the fleet's token
    through `offgrid peers pair`, lists it, forgets it; a wrong token is refused."""
    token = FLEET_TOKEN
    ports = {"a": free_port(), "b": free_port()}
    servers = {}
    for name in ("a", "b"):
        (tmp_path / name / "home").mkdir(parents=True)
        (tmp_path / name / "models").mkdir()
        secret = {"OFFGRID_P2P_TOKEN": token if name == "a" else ""}
        servers[name] = start_loopback_node(tmp_path, name, ports[name], engine_binary, **secret)
    a, b = servers["a"], servers["b"]

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "offgrid", "peers", *args],
            env=b.env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    try:
        address = f"127.0.0.1:{ports['a']}"
        wrong = cli("pair", address, "--token", "not-the-fleet-secret")
        assert wrong.returncode == 1 and "Wrong pairing code" in wrong.stderr
        done = cli("pair", address, "--token", token)
        assert done.returncode == 0 and "Paired with node-a" in done.stdout, done.stderr
        listed = cli("list")
        assert "node-a" in listed.stdout and address in listed.stdout
        assert [p["name"] for p in peers(a)["peers"]] == ["node-b"]
        gone = cli("forget", "node-a")
        assert gone.returncode == 0 and peers(b)["peers"] == []
    finally:
        a.stop()
        b.stop()


def test_a_model_with_no_room_here_goes_to_a_peer_then_over_an_rpc_worker(
    tmp_path: Path, model_store: Path, engine_binary: EngineBinary
) -> None:
    """On loopback: A may give its engines only 60 % of what the starter needs
    (OFFGRID_MEMORY). Paired with B, which has the model, A's request is answered by B
    (federation, when it cannot fit). Paired also with W, an RPC worker, A plans the model
    over W and runs it itself, part of its layers on W."""
    need = 584_385_100  # the starter's estimate here (`offgrid show --json`: memory)
    token = FLEET_TOKEN
    ports = {n: free_port() for n in ("a", "b", "w")}
    env = {"a": {"OFFGRID_MEMORY": str(int(need * 0.6))}, "w": {"OFFGRID_RPC_WORKER": "1"}}
    servers = {}
    for name in ("a", "b", "w"):
        (tmp_path / name / "home").mkdir(parents=True)
        files = {} if name == "w" else {STARTER.file_name: STARTER.file_name}
        link_models(model_store, tmp_path / name / "models", files)
        servers[name] = start_loopback_node(
            tmp_path, name, ports[name], engine_binary, OFFGRID_FEDERATION="1", **env.get(name, {})
        )
    a = servers["a"]
    chat = {"model": STARTER_ID, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8}
    try:
        alone = api(a, "POST", "/v1/chat/completions", json=chat)
        assert alone.status_code == 503, alone.text  # no room, no peer: refused as before
        for peer in ("b", "w"):
            body = {"address": f"127.0.0.1:{ports[peer]}", "token": token}
            assert api(a, "POST", "/api/peers", json=body).status_code == 201

        def told(what: str) -> bool:
            loads = [p.get("load", {}) for p in peers(a)["peers"]]
            return len(loads) == 2 and all(load.get("at") for load in loads) and what in str(loads)

        wait_for(lambda: told("rpc_free"), 15, "A to hear of B's models and W's worker")
        # B has the model and room; W's worker too: the split, planned first, wins
        split = api(a, "POST", "/v1/chat/completions", json=chat)
        assert split.status_code == 200 and "x-offgrid-peer" not in split.headers, split.text
        log = (Path(a.env["OFFGRID_CACHE_DIR"]) / "logs" / f"engine-{STARTER_ID}.log").read_text()
        assert "--rpc 127.0.0.1:" in log.splitlines()[0] and "RPC0[" in log
        # without the worker (W forgotten, the engine stopped), B answers for A
        assert api(a, "DELETE", "/api/peers/node-w").status_code == 200
        assert api(a, "POST", f"/api/models/{STARTER_ID}/unload").status_code == 200
        federated = api(a, "POST", "/v1/chat/completions", json=chat)
        assert federated.status_code == 200, federated.text
        assert federated.headers["x-offgrid-peer"] == "node-b"
    finally:
        for srv in servers.values():
            srv.stop()


def _identity(folder: Path, name: str) -> Identity:
    return Identity.load(Keys(folder / name), name)


def test_every_pinned_peer_gets_in_and_a_stranger_does_not(tmp_path: Path) -> None:
    """Three peers pinned at once (OpenSSL picks an issuer by name: each node's certificate
    needs a subject of its own, or only one of them would verify), one stranger."""
    me = _identity(tmp_path, "me")
    friends = [_identity(tmp_path, f"friend-{i}") for i in range(3)]
    stranger = _identity(tmp_path, "stranger")
    pinned = [f.cert_pem for f in friends]

    async def main() -> list[bool]:
        ctx = server_context(me, lambda: pinned, lambda: False)

        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
            writer.write(b"in\n" if der else b"anonymous\n")
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=ctx)
        port = server.sockets[0].getsockname()[1]
        results = []
        for who in (*friends, stranger):
            client = client_context(who, me.cert_pem)
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client)
                results.append(await reader.readline() == b"in\n")
                writer.close()
            except (ssl.SSLError, ConnectionError):
                results.append(False)
        server.close()
        return results

    assert asyncio.run(main()) == [True, True, True, False]


def test_a_joiner_proves_it_holds_the_key_of_the_certificate_it_sends(tmp_path: Path) -> None:
    mine, theirs = _identity(tmp_path, "mine"), _identity(tmp_path, "theirs")
    said = holding("s" * 64, mine.fingerprint, "n" * 32)
    assert signed_by(mine.cert_pem, said, mine.sign(said))
    assert not signed_by(theirs.cert_pem, said, mine.sign(said)), "a certificate not its own"
    assert not signed_by(mine.cert_pem, said + b"!", mine.sign(said))
    assert not signed_by(mine.cert_pem, said, "not hex")


def test_a_pairing_certificate_must_be_one_sound_ed25519_certificate(tmp_path: Path) -> None:
    good = _identity(tmp_path, "good").cert_pem
    assert checked_cert(good) == good
    garbage = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    for bad in (garbage, good + good, ""):
        with pytest.raises(BadRequestError):
            checked_cert(bad)
