#!/usr/bin/env python3
"""A tiny stand-in for llama-server, for fault injection and relay measurements only.

Takes llama-server's flags (only --port and --alias matter) and answers /health, /slots and
the OpenAI routes with canned tokens, streamed as HTTP/1.1 chunks like the real engine.
Behaviour is chosen with FAKE_ENGINE_MODE:

  normal          answer (default)
  crash-on-load   exit 3 before listening
  hang-on-load    listen, but /health answers 503 forever
  ignore-sigterm  answer, and ignore SIGTERM (needs SIGKILL)

FAKE_ENGINE_TOKEN_MS sets the delay between streamed tokens (default 1 ms);
FAKE_ENGINE_LOAD_MS the time /health answers 503 after start (default 0);
FAKE_ENGINE_REASONING the number of ``reasoning_content`` pieces ("think0 " …) a stream
sends before its answer, as a reasoning model does (default 0).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time

MODE = os.environ.get("FAKE_ENGINE_MODE", "normal")
TOKEN_S = float(os.environ.get("FAKE_ENGINE_TOKEN_MS", "1")) / 1000
LOAD_S = float(os.environ.get("FAKE_ENGINE_LOAD_MS", "0")) / 1000
REASONING = int(os.environ.get("FAKE_ENGINE_REASONING", "0"))


def arg(name: str, default: str) -> str:
    argv = sys.argv[1:]
    return argv[argv.index(name) + 1] if name in argv else default


ALIAS = arg("--alias", "fake")
STARTED = time.monotonic()


def response(status: int, body: bytes, ctype: str = "application/json") -> bytes:
    head = f"HTTP/1.1 {status} X\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode().split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            headers = {
                k.lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:] if ":" in ln)
            }
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            if path == "/health":
                loading = MODE == "hang-on-load" or time.monotonic() - STARTED < LOAD_S
                writer.write(response(503 if loading else 200, b'{"status":"ok"}'))
            elif path == "/slots":
                writer.write(response(200, b"[]"))
            elif method == "POST" and "multipart" in headers.get("content-type", ""):
                said = {"text": f"{len(body)} bytes of {headers['content-type'][:40]}"}
                writer.write(response(200, json.dumps(said).encode()))  # a transcription
            elif method == "POST":
                req = json.loads(body or b"{}")
                n = int(req.get("max_tokens") or 16)
                if req.get("stream"):
                    await stream(writer, n)
                    writer.close()
                    return
                msg = {"role": "assistant", "content": "tok " * n}
                out = {
                    "model": ALIAS,
                    "object": "chat.completion",
                    "choices": [{"index": 0, "message": msg, "finish_reason": "length"}],
                    "usage": {"completion_tokens": n, "prompt_tokens": 1, "total_tokens": n + 1},
                }
                writer.write(response(200, json.dumps(out).encode()))
            else:
                writer.write(response(404, b'{"error":{"message":"not found"}}'))
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()


async def stream(writer: asyncio.StreamWriter, n: int) -> None:
    writer.write(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    deltas = [{"reasoning_content": f"think{i} "} for i in range(REASONING)]
    for delta in deltas + [{"content": f"tok{i} "} for i in range(n)]:
        event = {
            "model": ALIAS,
            "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
        }
        writer.write(chunk(b"data: " + json.dumps(event).encode() + b"\n\n"))
        await writer.drain()
        await asyncio.sleep(TOKEN_S)
    done = {
        "model": ALIAS,
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": {}, "finish_reason": "length"}],
    }
    writer.write(
        chunk(b"data: " + json.dumps(done).encode() + b"\n\n")
        + chunk(b"data: [DONE]\n\n")
        + b"0\r\n\r\n"
    )
    await writer.drain()


async def main() -> None:
    if MODE == "crash-on-load":
        sys.exit(3)
    if MODE == "ignore-sigterm":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    server = await asyncio.start_server(handle, "127.0.0.1", int(arg("--port", "8080")))
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
