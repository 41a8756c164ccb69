"""A free TCP port for a listener that starts later (a server, a rendezvous store, a weight group).

A port is chosen here, released, and bound by another process seconds later (a server loads its model first).
If it came from the kernel's ephemeral range, any outgoing connection made meanwhile (a health poll, a gloo
link) may take it, and the server then fails with "address already in use": this happened in CI. So the port
comes from just below that range, where the kernel never assigns ports on its own; only another listener
could take it in between, and bind() checks for one.

A store this process hosts itself needs no release at all: `reserve_port` binds and listens at once, and the
code that starts the store later takes that socket with `claim_port` (torch's TCPStore accepts a listening
socket). The socket listens on the one address asked for, where a TCPStore given a port alone listens on all.

    port = reserve_port("127.0.0.1")                  # tell the other ranks; connections wait in the backlog
    listener = claim_port("127.0.0.1", port)          # later: TCPStore(..., master_listen_fd=listener.detach())
"""

from __future__ import annotations

import random
import socket
import threading

_FIRST_PORT = 20000  # below this sit many well-known services (databases, dev servers)
_TRIES = 100
_reserved: dict[tuple[str, int], socket.socket] = {}
_reserved_lock = threading.Lock()


def ephemeral_range(path: str = "/proc/sys/net/ipv4/ip_local_port_range") -> tuple[int, int]:
    try:
        with open(path) as f:
            low, high = (int(word) for word in f.read().split())
        return low, high
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default; other systems: see free_port's fallback


def free_port(host: str = "127.0.0.1") -> int:
    for port in _candidates():
        if _can_bind(host, port):
            return port
    with socket.socket() as sock:  # no room below the ephemeral range: let the kernel choose
        sock.bind((host, 0))
        return sock.getsockname()[1]


def reserve_port(host: str = "127.0.0.1") -> int:
    """A free port (chosen as free_port chooses) that this process listens on from now, on `host` only."""
    sock = _first_listening_socket(host)
    port = sock.getsockname()[1]
    with _reserved_lock:
        _reserved[(host, port)] = sock
    return port


def claim_port(host: str, port: int) -> socket.socket | None:
    """The listening socket `reserve_port(host)` holds for `port`, now the caller's; None if none is held."""
    with _reserved_lock:
        return _reserved.pop((host, port), None)


def listening_socket(host: str, port: int) -> socket.socket:
    """A socket listening on host:port (that address only). Raises OSError if it cannot."""
    sock = socket.socket()
    try:
        # as torch's own store listener: a port whose last connections linger in TIME_WAIT is still usable
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(socket.SOMAXCONN)
    except OSError:
        sock.close()
        raise
    return sock


def _candidates():
    low, _ = ephemeral_range()
    candidates = range(_FIRST_PORT, low)
    # SystemRandom: processes that seeded `random` alike (rollout ranks of one run) must not pick alike
    return random.SystemRandom().sample(candidates, min(_TRIES, len(candidates)))


def _first_listening_socket(host: str) -> socket.socket:
    for port in _candidates():
        try:
            return listening_socket(host, port)
        except OSError:
            continue
    return listening_socket(host, 0)  # no room below the ephemeral range: let the kernel choose


def _can_bind(host: str, port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True
