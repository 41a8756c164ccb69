"""A free TCP port for a listener that starts later (a server, a rendezvous store, a weight group).

A port is chosen here, released, and bound by another process seconds later (a server loads its model first).
If it came from the kernel's ephemeral range, any outgoing connection made meanwhile (a health poll, a gloo
link) may take it, and the server then fails with "address already in use": this happened in CI. So the port
comes from just below that range, where the kernel never assigns ports on its own; only another listener
could take it in between, and bind() checks for one.
"""

from __future__ import annotations

import random
import socket

_FIRST_PORT = 20000  # below this sit many well-known services (databases, dev servers)
_TRIES = 100


def ephemeral_range(path: str = "/proc/sys/net/ipv4/ip_local_port_range") -> tuple[int, int]:
    try:
        with open(path) as f:
            low, high = (int(word) for word in f.read().split())
        return low, high
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default; other systems: see free_port's fallback


def free_port(host: str = "127.0.0.1") -> int:
    low, _ = ephemeral_range()
    candidates = range(_FIRST_PORT, low)
    # SystemRandom: processes that seeded `random` alike (rollout ranks of one run) must not pick alike
    for port in random.SystemRandom().sample(candidates, min(_TRIES, len(candidates))):
        if _can_bind(host, port):
            return port
    with socket.socket() as sock:  # no room below the ephemeral range: let the kernel choose
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _can_bind(host: str, port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True
