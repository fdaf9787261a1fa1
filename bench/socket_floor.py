"""What an idle Socket.IO connection costs python-socketio, engine.io and aiohttp alone: the floor
under the bridge's memory per socket (bench.relay's socket memory), and where it goes.

Run as its own process (`python -m bench.socket_floor N`), so nothing else is in its heap: it serves
a python-socketio server made as the bridge makes its own (bridge.sio_server.make_server) with a
connect handler that accepts everyone and keeps nothing, connects N idle sockets to it from a child
process (engine.io over WebSocket, the Socket.IO CONNECT answered), and prints, as JSON, the bytes
tracemalloc sees allocated per socket, by the file that allocated them. Loopback only; bounded.
"""

from __future__ import annotations

import asyncio
import gc
import json
import subprocess
import sys
import tracemalloc
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from bench.profile import module_path
from bridge.sio_server import make_server

HOST = "127.0.0.1"


_CLIENT = r"""
import asyncio, sys
import aiohttp

async def one(session, url, held):
    ws = await session.ws_connect(url)
    await ws.receive()  # engine.io OPEN
    await ws.send_str("40")  # Socket.IO CONNECT
    await ws.receive()  # its answer
    held.append(ws)

async def main():
    held = []
    url = f"http://{sys.argv[1]}:{sys.argv[2]}/socket.io/?EIO=4&transport=websocket"
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        total = int(sys.argv[3])
        for start in range(0, total, 100):
            await asyncio.gather(*(one(session, url, held) for _ in range(min(100, total - start))))
        print(len(held), flush=True)
        await asyncio.sleep(600)

asyncio.run(main())
"""


async def measure(sockets: int) -> dict[str, Any]:
    sio = make_server(())

    async def accept(_sid: str, _environ: object, _auth: object = None) -> None:
        return None

    sio.on("connect", accept)
    app = web.Application()
    sio.attach(app)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, HOST, 0)
    await site.start()
    port = runner.addresses[0][1]
    gc.collect()
    tracemalloc.start(1)
    before = tracemalloc.take_snapshot()
    client = subprocess.Popen(  # noqa: ASYNC220 - the child's lifetime is this function's
        [sys.executable, "-c", _CLIENT, HOST, str(port), str(sockets)], stdout=subprocess.PIPE, text=True
    )
    try:
        connected = int((await asyncio.wait_for(asyncio.to_thread(client.stdout.readline), 120)).strip() or 0)  # type: ignore[union-attr]
        await asyncio.sleep(2)  # settled: handshakes done, nothing in flight
        gc.collect()
        after = tracemalloc.take_snapshot()
    finally:
        # Tracing every allocation slows the whole process down (a test suite calling this would
        # run ten times slower afterwards).
        tracemalloc.stop()
        client.kill()
        client.wait()
        await runner.cleanup()
    stats = after.compare_to(before, "filename")
    per = max(1, connected)
    by_file = [
        (module_path(stat.traceback[0].filename), round(stat.size_diff / per)) for stat in stats if stat.size_diff > 0
    ]
    return {
        "sockets": connected,
        "traced_bytes_per_socket": round(sum(stat.size_diff for stat in stats) / per),
        "by_file": by_file[:12],
    }


def memory_note(memory: Mapping[str, Any]) -> list[str]:
    """10,000 sockets over 300 MiB: how much of a socket is the bridge's, and how much the floor of
    python-socketio, engine.io and aiohttp themselves (bench.socket_floor)."""
    tenk = next((row for row in memory.get("rows", []) if row["n"] >= 10_000), None)
    floor = memory.get("framework_floor") or {}
    if tenk is None or tenk["rss_bytes"] <= 300 * 2**20:
        return []
    where = ", ".join(f"{name} {size / 1024:.1f} KiB" for name, size in floor.get("by_file", [])[:6])
    return [
        f"Memory: 10,000 idle sockets take {tenk['rss_bytes'] / 2**20:.0f} MiB, "
        f"{tenk['per_socket_bytes'] / 1024:.1f} KiB each. "
        + (
            f"python-socketio, engine.io and aiohttp alone, with nothing of ours, allocate "
            f"{floor['traced_bytes_per_socket'] / 1024:.1f} KiB per idle socket (tracemalloc, "
            f"{floor['sockets']} sockets, bench/socket_floor.py): {where}; the bridge's RSS per socket is "
            f"{(tenk['per_socket_bytes'] - floor['traced_bytes_per_socket']) / 1024:.1f} KiB over that floor. "
            "Next: a transport without engine.io's per-socket task and queue."
            if floor.get("traced_bytes_per_socket")
            else ""
        )
    ]


async def socket_floor(sockets: int = 2000) -> dict[str, Any]:
    """The floor, measured in a process of its own."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.socket_floor", str(sockets), stdout=asyncio.subprocess.PIPE
    )
    out, _err = await asyncio.wait_for(proc.communicate(), 300)
    result: dict[str, Any] = json.loads(out)
    return result


if __name__ == "__main__":
    print(json.dumps(asyncio.run(measure(int(sys.argv[1]) if len(sys.argv) > 1 else 2000))))
