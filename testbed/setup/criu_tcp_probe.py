#!/usr/bin/env python3
"""Workload for the CRIU probe of testbed/setup-host.sh.

One process tree holding an ESTABLISHED TCP connection on 127.0.0.1 (plus the
LISTEN socket it came from): the parent is an echo server, its forked child a
client that sends a counter every 20 ms and checks the echo. After every good
round trip the client writes the counter to STATE_DIR/progress, so the caller
can see that the *same* connection keeps working after `criu dump` +
`criu restore --tcp-established`. Any mismatch or socket error is written to
STATE_DIR/error. The loop is bounded (at most MAX_SECONDS of wall time), so a
forgotten probe stops by itself.

Usage: criu_tcp_probe.py STATE_DIR   (run it inside a throwaway network namespace)
Writes STATE_DIR/pids = "<server-pid> <client-pid>" once the connection is up.
"""
import os
import socket
import sys
import time

MAX_SECONDS = 120
INTERVAL = 0.02


def write_atomic(path: str, text: str) -> None:
    # Open, write, close and rename: no file descriptor on the state files stays
    # open, so CRIU has nothing to carry over for them.
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def client(state: str, port: int) -> None:
    deadline = time.time() + MAX_SECONDS
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        reader = sock.makefile("rb")
        n = 0
        while time.time() < deadline:
            n += 1
            sock.sendall(b"%d\n" % n)
            reply = reader.readline()
            if reply != b"%d\n" % n:
                raise RuntimeError("bad echo %r for %d" % (reply, n))
            write_atomic(os.path.join(state, "progress"), "%d\n" % n)
            time.sleep(INTERVAL)
        sock.close()
    except Exception as exc:  # report any failure to the caller, then stop
        write_atomic(os.path.join(state, "error"), "client: %s\n" % exc)
        os._exit(1)
    os._exit(0)


def main() -> None:
    state = sys.argv[1]
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    child = os.fork()
    if child == 0:
        listener.close()
        client(state, port)
    conn, _ = listener.accept()
    # The listener stays open on purpose: CRIU must restore LISTEN sockets too.
    write_atomic(os.path.join(state, "pids"), "%d %d\n" % (os.getpid(), child))
    try:
        while True:
            data = conn.recv(4096)
            if not data:
                break
            conn.sendall(data)
    except Exception as exc:
        write_atomic(os.path.join(state, "error"), "server: %s\n" % exc)
    os.waitpid(child, 0)


if __name__ == "__main__":
    main()
