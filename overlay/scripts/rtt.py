# TCP round-trip latency probe for measure-links.sh: `rtt.py srv` echoes on :7001, `rtt.py cli <ip>` times 300 1-byte round trips.
import socket, sys, time, statistics
if sys.argv[1] == "srv":
    l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); l.bind(("0.0.0.0", 7001)); l.listen(1)
    c, _ = l.accept(); c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    while True:
        d = c.recv(64)
        if not d: break
        c.sendall(d)
else:
    s = socket.create_connection((sys.argv[2], 7001), timeout=3); s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    r = []
    for i in range(300):
        t = time.perf_counter(); s.sendall(b"x"); s.recv(64); r.append((time.perf_counter() - t) * 1e6)
    r.sort(); print("rtt median %.0f us, p99 %.0f us" % (statistics.median(r), r[int(len(r)*0.99)]))
