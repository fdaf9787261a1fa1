"""bench.socket_floor: the floor under the bridge's memory per socket, and the note set against it."""

from __future__ import annotations

import tracemalloc

from bench.socket_floor import measure, memory_note


def test_memory_over_the_goal_is_set_against_the_frameworks_floor() -> None:
    memory = {
        "rows": [{"n": 10_000, "rss_bytes": 400 * 2**20, "per_socket_bytes": 31 * 1024}],
        "framework_floor": {
            "sockets": 2000,
            "traced_bytes_per_socket": 29 * 1024,
            "by_file": [["aiohttp/web_ws.py", 2048]],
        },
    }
    (note,) = memory_note(memory)
    assert "10,000 idle sockets take 400 MiB, 31.0 KiB each" in note
    assert "allocate 29.0 KiB per idle socket" in note and "aiohttp/web_ws.py 2.0 KiB" in note
    assert "2.0 KiB over that floor" in note
    assert memory_note({"rows": [{"n": 10_000, "rss_bytes": 200 * 2**20, "per_socket_bytes": 1}]}) == []


async def test_the_floor_is_measured_on_a_real_python_socketio_server() -> None:
    floor = await measure(50)
    assert floor["sockets"] == 50
    files = [name for name, _size in floor["by_file"]]
    assert floor["traced_bytes_per_socket"] > 0 and any(name.startswith(("engineio/", "aiohttp/")) for name in files)
    assert not tracemalloc.is_tracing()  # left as found: tracing would slow everything after it
