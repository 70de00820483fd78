#!/usr/bin/env python3
"""The test node's cluster DNS data (scripts/kube-node.sh; Debian has no CoreDNS package).

  kube-node-dns.py sync DIR HOST:PORT TOKEN
      Keeps DIR/dns/hosts equal to the Services' ClusterIPs as
      `<name>.<namespace>.svc.cluster.local` and tells dnsmasq (SIGHUP, pid in
      DIR/dns/dnsmasq.pid) after each change: list, then watch from the list's
      resourceVersion; relist when the watch ends, expires or fails.
  kube-node-dns.py query SERVER NAME
      Exit 0 when the DNS server at SERVER:53 answers an A record for NAME.
"""

import json
import os
import signal
import socket
import ssl
import struct
import sys
import time
import urllib.request


def sync(state_dir, server, token):
    ctx = ssl.create_default_context(cafile=f"{state_dir}/pki/ca.crt")

    def get(path, timeout):
        req = urllib.request.Request(
            f"https://{server}{path}", headers={"Authorization": f"Bearer {token}"})
        return urllib.request.urlopen(req, context=ctx, timeout=timeout)

    def key(svc):
        return f"{svc['metadata']['namespace']}/{svc['metadata']['name']}"

    def publish(services):
        lines = []
        for k, svc in sorted(services.items()):
            ip = svc.get("spec", {}).get("clusterIP")
            if ip and ip != "None":
                ns, name = k.split("/")
                lines.append(f"{ip} {name}.{ns}.svc.cluster.local\n")
        tmp = f"{state_dir}/dns/hosts.tmp"
        with open(tmp, "w") as f:
            f.writelines(lines)
        os.replace(tmp, f"{state_dir}/dns/hosts")
        try:
            with open(f"{state_dir}/dns/dnsmasq.pid") as f:
                os.kill(int(f.read().strip()), signal.SIGHUP)
        except (OSError, ValueError):
            pass

    while True:
        try:
            listing = json.load(get("/api/v1/services", 30))
            services = {key(s): s for s in listing["items"]}
            publish(services)
            rv = listing["metadata"]["resourceVersion"]
            watch = f"/api/v1/services?watch=1&resourceVersion={rv}&timeoutSeconds=300"
            with get(watch, 330) as events:
                for line in events:
                    ev = json.loads(line)
                    if ev["type"] == "ERROR":
                        break
                    if ev["type"] == "DELETED":
                        services.pop(key(ev["object"]), None)
                    elif ev["type"] in ("ADDED", "MODIFIED"):
                        services[key(ev["object"])] = ev["object"]
                    publish(services)
        except Exception as e:  # the API server restarting, a dropped watch: relist
            print(f"kube-node-dns: {e}", flush=True)
            time.sleep(1)


def query(server, name):
    q = struct.pack(">HHHHHH", 0x4D53, 0x0100, 1, 0, 0, 0)
    q += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    q += struct.pack(">HH", 1, 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(1)
    s.sendto(q, (server, 53))
    r = s.recv(512)
    return len(r) >= 8 and struct.unpack(">H", r[6:8])[0] > 0


def main():
    if len(sys.argv) == 5 and sys.argv[1] == "sync":
        sync(sys.argv[2], sys.argv[3], sys.argv[4])
    elif len(sys.argv) == 4 and sys.argv[1] == "query":
        sys.exit(0 if query(sys.argv[2], sys.argv[3]) else 1)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
