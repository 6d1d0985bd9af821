"""A real redis-server on loopback for the tests and the benchmarks (no pytest here)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_redis_server(port: int | None = None) -> tuple[subprocess.Popen | None, str | None]:
    """(process, "127.0.0.1:port") of a redis-server without persistence, answering before this
    returns; (None, None) where redis-server is not installed."""
    exe = shutil.which("redis-server")
    if exe is None:
        return None, None
    port = port or free_port()
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    return proc, f"127.0.0.1:{port}"
