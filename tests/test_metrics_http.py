"""The metrics HTTP server under idle and excess connections (real sockets, the real server): handler
threads stay bounded, an idle connection is closed after the socket timeout, and /healthz keeps answering."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request

from service_helpers import wait_for

from edge_runtime.service.metrics import MetricsServer, ServiceMetrics

TIMEOUT_S = 1.0
MAX_CONNECTIONS = 4
IDLE = 40


def handler_threads() -> int:
    return sum(1 for t in threading.enumerate() if "process_request" in t.name)


def closed_by_peer(sock: socket.socket, within: float) -> bool:
    sock.settimeout(within)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_idle_connections_are_bounded_and_closed() -> None:
    server = MetricsServer(ServiceMetrics().registry, lambda: (True, {"state": "running"}), "127.0.0.1", 0,
                           timeout_s=TIMEOUT_S, max_connections=MAX_CONNECTIONS)
    server.start()
    socks: list[socket.socket] = []
    try:
        t0 = time.monotonic()
        socks = [socket.create_connection(("127.0.0.1", server.port), timeout=5) for _ in range(IDLE)]
        wait_for(lambda: server.httpd.refused >= IDLE - MAX_CONNECTIONS, 5, "connections beyond the bound refused")
        assert handler_threads() <= MAX_CONNECTIONS
        assert server.httpd.refused == IDLE - MAX_CONNECTIONS
        # every connection is closed by the server: the refused ones at once, the idle ones at the timeout
        assert all(closed_by_peer(s, TIMEOUT_S * 3) for s in socks)
        assert time.monotonic() - t0 >= TIMEOUT_S * 0.9  # the idle ones were served, not refused
        wait_for(lambda: handler_threads() == 0, 5, "handler threads ended")
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/healthz", timeout=5) as r:
            assert r.status == 200 and json.loads(r.read())["state"] == "running"
    finally:
        for s in socks:
            s.close()
        server.stop()


def test_a_slot_freed_by_the_timeout_serves_the_next_client() -> None:
    server = MetricsServer(ServiceMetrics().registry, lambda: (False, {"state": "stalled"}), "127.0.0.1", 0,
                           timeout_s=TIMEOUT_S, max_connections=1)
    server.start()
    idle = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    try:
        wait_for(lambda: handler_threads() == 1, 5, "the idle client holds the only slot")
        assert closed_by_peer(idle, TIMEOUT_S * 3)
        wait_for(lambda: handler_threads() == 0, 5, "slot freed")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{server.port}/healthz", timeout=5)
            raise AssertionError("a stalled station answered 200")
        except urllib.error.HTTPError as e:
            assert e.code == 503 and json.loads(e.read())["state"] == "stalled"
    finally:
        idle.close()
        server.stop()
