#!/usr/bin/env python3
"""A burst of simulated PXE clients (BIOS PXE ROMs: vendor class PXEClient, option 93 = 0).

Run inside a network namespace whose interface sits on the server's segment:
    dhcp_burst.py IFACE COUNT
Every client sends DISCOVER, takes the first OFFER, sends REQUEST, and waits for the ACK;
lost packets are retransmitted after 2 s like firmware does. Prints one JSON line:
{"clients":N,"acked":N,"unique_addresses":N,"bad_bootfile":N,"seconds":S}.
"""
import json, socket, struct, sys, time

iface, count = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
s.setsockopt(socket.SOL_SOCKET, 25, iface.encode())  # SO_BINDTODEVICE
s.bind(("0.0.0.0", 68))
s.settimeout(0.2)

def mac(i):
    return bytes([0x52, 0x54, 0x01, 0x00, (i >> 8) & 0xFF, i & 0xFF])

def packet(i, mtype, extra=b""):
    xid = 0x10000000 + i
    hdr = struct.pack("!BBBBIHHIIII16s64s128s", 1, 1, 6, 0, xid, 0, 0x8000, 0, 0, 0, 0,
                      mac(i), b"", b"")
    vc = b"PXEClient:Arch:00000:UNDI:002001"
    opts = bytes([53, 1, mtype, 60, len(vc)]) + vc + bytes([93, 2, 0, 0, 55, 4, 1, 3, 66, 67]) + extra + b"\xff"
    return hdr + b"\x63\x82\x53\x63" + opts

def parse(d):
    if len(d) < 240:
        return None
    xid = struct.unpack("!I", d[4:8])[0]
    yiaddr = socket.inet_ntoa(d[16:20])
    opts, i, mtype, bootfile, sid = d[240:], 0, None, None, None
    while i < len(opts) and opts[i] != 255:
        if opts[i] == 0:
            i += 1
            continue
        code, ln = opts[i], opts[i + 1]
        val = opts[i + 2:i + 2 + ln]
        if code == 53:
            mtype = val[0]
        elif code == 67:
            bootfile = val.decode(errors="replace")
        elif code == 54:
            sid = val
        i += 2 + ln
    if bootfile is None:  # BOOTP file field (dnsmasq puts it there)
        bootfile = d[108:236].split(b"\0", 1)[0].decode(errors="replace") or None
    return xid - 0x10000000, mtype, yiaddr, bootfile, sid

offers, acks = {}, {}
t0 = time.time()
pending = set(range(count))
last_send = {}
deadline = t0 + 120
while (pending or len(acks) < count) and time.time() < deadline:
    now = time.time()
    for i in list(range(count)):
        if i in acks:
            continue
        if now - last_send.get(i, 0) < 2.0:
            continue
        if i in offers:
            yi, sid = offers[i][0], offers[i][2]
            extra = bytes([50, 4]) + socket.inet_aton(yi) + bytes([54, 4]) + sid
            s.sendto(packet(i, 3, extra), ("255.255.255.255", 67))
        else:
            s.sendto(packet(i, 1), ("255.255.255.255", 67))
        last_send[i] = now
    while True:
        try:
            d = s.recv(4096)
        except socket.timeout:
            break
        p = parse(d)
        if not p or not (0 <= p[0] < count):
            continue
        i, mtype, yi, bf, sid = p
        if mtype == 2 and i not in offers:
            offers[i] = (yi, bf, sid)
            extra = bytes([50, 4]) + socket.inet_aton(yi) + bytes([54, 4]) + sid
            s.sendto(packet(i, 3, extra), ("255.255.255.255", 67))
            last_send[i] = time.time()
        elif mtype == 5 and i not in acks:
            acks[i] = (yi, bf)
            pending.discard(i)
elapsed = time.time() - t0
addrs = [a for a, _ in acks.values()]
print(json.dumps({
    "clients": count,
    "acked": len(acks),
    "unique_addresses": len(set(addrs)),
    "bad_bootfile": sum(1 for _, b in acks.values() if b != "undionly.kpxe"),
    "seconds": round(elapsed, 3),
}))
