"""LAN figures (issue 17), on a real LAN built on this machine (tests/lan.py: two network
namespaces on a bridge), each node a real server with P2P on:

1. pull throughput: node B pulls Gemma 3 270M (253 MB) from node A over mutual TLS
   (resumable, hashed as it arrives, fsynced, registered), against curl fetching the same
   file over the same veth into the same folder: from A's peer listener with B's
   certificate (the same TLS), and over plain HTTP (``python -m http.server`` on A: the
   link without TLS);
2. a model split over B's RPC worker (layers shared by free memory, through the TLS
   tunnel) against the same model on A alone: decode tokens/s as the engine counts them;
3. federation: time to first streamed token when B sends the request on to A, against
   asking A directly (both through the harness's relay into the node).

Both nodes share this machine's cores: the split pays for the network and the second
process, and gains no memory or compute, so its ratio shows the cost only.

Run: .venv/bin/python bench/peers.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from conftest import REAL_ENV, link_models, wait_for
from lan import Lan, available, start_node_server
from offgrid.config import load_settings
from offgrid.engine.build import find_engine
from offgrid.models.starter import GEMMA, STARTER, place_model

PORT = 11612
FEDERATED, SPLIT, LOCAL = "only-on-a.Q4_1", "split-me.Q4_1", STARTER.model_id
PROMPT = [{"role": "user", "content": "Write a short story about a lighthouse keeper."}]


def _pull(b_url: str, model: str) -> float:
    """Seconds for B to pull ``model`` from A, start to verified and registered."""
    began = time.perf_counter()
    body = {"peer": "node-a", "model": model}
    with requests.post(f"{b_url}/api/pulls", json=body, stream=True, timeout=600) as resp:
        last: dict[str, Any] = {}
        for line in resp.iter_lines():
            if line.startswith(b"data: "):
                last = json.loads(line[6:])
    took = time.perf_counter() - began
    assert last.get("status") == "done", last
    requests.delete(f"{b_url}/api/models/{model}", timeout=60).raise_for_status()
    return took


def _curl(node: Any, url: str, dest: Path, *tls: str, sync: bool = False) -> float:
    """Seconds for curl to fetch ``url`` into ``dest``; with ``sync``, until the file is
    on the disk too (what a pull guarantees before it names a model)."""
    began = time.perf_counter()
    node.exec(["curl", "-sSf", *tls, "-o", str(dest), url], check=True)
    if sync:
        node.exec(["sync", str(dest)], check=True)
    took = time.perf_counter() - began
    dest.unlink()
    return took


def _transfer_only(node: Any, home: Path, peer_home: Path, url: str) -> float:
    """Seconds for B's own peer client (httpx2, mutual TLS) to receive the file, kept in no
    file: the network and TLS part of a pull, without the disk."""
    import httpx2

    from offgrid.models.keys import Keys
    from offgrid.p2p.identity import Identity, client_context

    me = Identity.load(Keys(home / ".local/share/offgrid/keys"), "node-b")
    cert = (peer_home / ".local/share/offgrid/keys/node.crt").read_text()

    def fetch() -> float:
        with httpx2.Client(verify=client_context(me, cert), timeout=60) as client:
            began = time.perf_counter()
            with client.stream("GET", url) as resp:
                for _block in resp.iter_raw():
                    pass
            return time.perf_counter() - began

    took: float = node.call(fetch)
    return took


def _decode(url: str, model: str) -> float:
    """Decode tokens/s of one answer, as the engine timed it."""
    body = {"model": model, "messages": PROMPT, "max_tokens": 96, "temperature": 0}
    got = requests.post(f"{url}/v1/chat/completions", json=body, timeout=600).json()
    return float(got["timings"]["predicted_per_second"])


def _ttft(url: str, model: str) -> float:
    body = {"model": model, "messages": PROMPT, "max_tokens": 4, "stream": True}
    began = time.perf_counter()
    with requests.post(f"{url}/v1/chat/completions", json=body, stream=True, timeout=60) as r:
        for line in r.iter_lines():
            if line.startswith(b"data: ") and b'"content"' in line:
                return (time.perf_counter() - began) * 1000
    raise AssertionError("no token came")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if reason := available():
        sys.exit(f"cannot build a LAN here: {reason}")
    settings = load_settings(REAL_ENV)
    store = settings.cache_dir / "test-models"
    for model in (STARTER, GEMMA):
        place_model(model, store, settings.cache_dir / "downloads")
    binary = find_engine(settings)
    tmp = Path(tempfile.mkdtemp(prefix="offgrid-peers-"))
    names = {f.file_name: f.file_name for f in (STARTER, GEMMA)}
    names |= {f"{FEDERATED}.gguf": STARTER.file_name, f"{SPLIT}.gguf": STARTER.file_name}
    with Lan(2) as lan:
        a_node, b_node = lan.nodes
        servers = {}
        for name, node in (("a", a_node), ("b", b_node)):
            (tmp / name / "home").mkdir(parents=True)
            models = link_models(store, tmp / name / "models", names if name == "a" else {})
            servers[name] = start_node_server(
                node,
                tmp / name,
                models,
                binary,
                OFFGRID_P2P="1",
                OFFGRID_FEDERATION="1",
                OFFGRID_NODE_NAME=f"node-{name}",
                OFFGRID_SPLIT_MODELS=SPLIT,
                OFFGRID_RPC_WORKER="1" if name == "b" else "0",
            )
        a, b = servers["a"], servers["b"]
        try:
            code = requests.post(f"{a.url}/api/peers/pairing", timeout=10).json()["code"]
            body = {"address": f"{a_node.ip}:{PORT}", "code": code}
            requests.post(f"{b.url}/api/peers", json=body, timeout=30).raise_for_status()
            _report(args.rounds, lan, a, b, tmp)
        finally:
            a.stop()
            b.stop()


def _report(rounds: int, lan: Lan, a: Any, b: Any, tmp: Path) -> None:
    a_node, b_node = lan.nodes
    gemma, size = GEMMA.model_id, GEMMA.size
    http = a_node.popen(
        [sys.executable, "-m", "http.server", "-b", a_node.ip, "8000"],
        cwd=tmp / "a" / "models",
        stdout=open("/dev/null", "wb"),  # noqa: SIM115 (the LAN closes it with the process)
        stderr=open("/dev/null", "wb"),  # noqa: SIM115
    )
    keys = Path(b.env["HOME"]) / ".local/share/offgrid/keys"
    tls = ("-k", "--cert", str(keys / "node.crt"), "--key", str(keys / "node.key"))
    dest = tmp / "b" / "models" / ".curl.gguf"
    peer_url = f"https://{a_node.ip}:{PORT}/p2p/models/{gemma}/{GEMMA.file_name}"
    plain_url = f"http://{a_node.ip}:8000/{GEMMA.file_name}"
    wait_for(
        lambda: b_node.exec(["curl", "-sf", "-o", "/dev/null", plain_url]).returncode == 0,
        30,
        "http.server on A",
    )
    pulls, curls, synced, plains, bare = [], [], [], [], []
    homes = Path(b.env["HOME"]), Path(a.env["HOME"])
    for _ in range(rounds):
        pulls.append(_pull(b.url, gemma))
        bare.append(_transfer_only(b_node, *homes, peer_url))
        curls.append(_curl(b_node, peer_url, dest, *tls))
        synced.append(_curl(b_node, peer_url, dest, *tls, sync=True))
        plains.append(_curl(b_node, plain_url, dest))
    http.terminate()
    mb = size / 1e6
    pull_s, curl_s, sync_s, plain_s, bare_s = (
        statistics.median(x) for x in (pulls, curls, synced, plains, bare)
    )
    print(f"pull of {mb:.0f} MB over a veth, median of {rounds}:")
    print(f"  offgrid pull (mTLS, hashed, fsynced, registered) {mb / pull_s:7.1f} MB/s")
    print(f"  offgrid's peer client alone, no disk (mTLS)      {mb / bare_s:7.1f} MB/s")
    print(f"  curl, same listener and certificate (mTLS)       {mb / curl_s:7.1f} MB/s")
    print(f"  curl + sync of the file, same mTLS               {mb / sync_s:7.1f} MB/s")
    print(f"  curl, plain HTTP over the same veth              {mb / plain_s:7.1f} MB/s")
    print(
        f"  ratio pull / curl mTLS {curl_s / pull_s:.2f}, / curl+sync {sync_s / pull_s:.2f}, "
        f"/ curl plain {plain_s / pull_s:.2f}; peer client alone / curl mTLS "
        f"{curl_s / bare_s:.2f}"
    )
    # a wired LAN of 1 Gbit/s (A's side of the link shaped): the network sets the pace
    a_node.exec(
        [
            "tc",
            "qdisc",
            "replace",
            "dev",
            "eth0",
            "root",
            "tbf",
            "rate",
            "1gbit",
            "burst",
            "1mb",
            "latency",
            "50ms",
        ],
        check=True,
    )
    paced_pull, paced_curl = [], []
    for _ in range(rounds):
        paced_pull.append(_pull(b.url, gemma))
        paced_curl.append(_curl(b_node, peer_url, dest, *tls))
    a_node.exec(["tc", "qdisc", "del", "dev", "eth0", "root"], check=True)
    p_s, c_s = statistics.median(paced_pull), statistics.median(paced_curl)
    print(
        f"  link shaped at 1 Gbit/s: pull {mb / p_s:.1f} MB/s, curl mTLS {mb / c_s:.1f} MB/s: "
        f"ratio {c_s / p_s:.2f}"
    )

    wait_for(
        lambda: any(
            p.get("load", {}).get("rpc_free")
            for p in requests.get(f"{a.url}/api/peers", timeout=10).json()["peers"]
        ),
        30,
        "A to hear of B's RPC worker",
    )
    _decode(a.url, SPLIT), _decode(a.url, LOCAL)  # loaded, warm
    split, local = [], []
    for _ in range(rounds):
        split.append(_decode(a.url, SPLIT))
        local.append(_decode(a.url, LOCAL))
    s, lo = statistics.median(split), statistics.median(local)
    print(f"split model decode {s:.1f} tok/s vs one box {lo:.1f} tok/s: ratio {s / lo:.2f}")

    _ttft(b.url, FEDERATED), _ttft(a.url, FEDERATED)  # loaded, connections warm
    fed, direct = [], []
    for _ in range(rounds * 4):
        fed.append(_ttft(b.url, FEDERATED))
        direct.append(_ttft(a.url, FEDERATED))
    f_ms, d_ms = statistics.median(fed), statistics.median(direct)
    paired = statistics.median(x - y for x, y in zip(fed, direct, strict=True))
    print(
        f"federation TTFT {f_ms:.1f} ms vs direct {d_ms:.1f} ms: "
        f"added {paired:+.1f} ms (paired median)"
    )


if __name__ == "__main__":
    main()
