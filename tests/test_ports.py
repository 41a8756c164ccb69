"""free_port: a port no outgoing connection can take before the server binds it, and one nobody listens on."""

import socket

from apr_ds.cluster import ports


def test_ports_come_from_below_the_kernels_ephemeral_range_and_can_be_bound():
    low, _ = ports.ephemeral_range()
    for _ in range(20):
        port = ports.free_port()
        assert 1024 <= port < low
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


def test_a_port_someone_listens_on_is_never_chosen(monkeypatch):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        taken = listener.getsockname()[1]
        # only two candidates: the taken one and the next
        monkeypatch.setattr(ports, "_FIRST_PORT", taken)
        monkeypatch.setattr(ports, "ephemeral_range", lambda: (taken + 2, 65535))
        assert {ports.free_port() for _ in range(20)} == {taken + 1}


def test_without_room_below_the_ephemeral_range_the_kernel_chooses(monkeypatch):
    monkeypatch.setattr(ports, "ephemeral_range", lambda: (1024, 65535))
    port = ports.free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_the_range_is_read_from_proc_or_defaults_to_linuxs(tmp_path):
    range_file = tmp_path / "ip_local_port_range"
    range_file.write_text("40000\t50000\n")
    assert ports.ephemeral_range(str(range_file)) == (40000, 50000)
    assert ports.ephemeral_range(str(tmp_path / "missing")) == (32768, 60999)


def test_processes_that_seeded_random_alike_do_not_pick_alike():
    import random
    pairs = []
    for _ in range(5):
        random.seed(0)
        first = ports.free_port()
        random.seed(0)
        pairs.append((first, ports.free_port()))
    assert any(a != b for a, b in pairs)
