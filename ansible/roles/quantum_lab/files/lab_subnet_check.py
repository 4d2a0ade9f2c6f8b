#!/usr/bin/env python3
"""Print, as a JSON list, the control node's IPv4 addresses that clash with a lab host's subnet.

A clash is the lab host's own address anywhere on the control node, or any address inside (or a subnet overlapping)
the lab subnet on an interface that is not the lab's own: the host's veth in point-to-point mode, the lab bridge in
bridge mode (where the gateway address is shared by every host of the fleet on purpose).
Usage: lab_subnet_check.py LAB_IP GATEWAY_IP PREFIX OWN_INTERFACE
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys


def clashes(lab_ip: str, gateway: str, prefix: int, own: str, lines: list[str]) -> list[str]:
    """The `ip -o -4 addr show` lines that clash with the lab subnet (see the module docstring)."""
    subnet = ipaddress.ip_interface(f"{gateway}/{prefix}").network
    host = ipaddress.ip_address(lab_ip)
    found = []
    for line in lines:
        fields = line.split()
        if len(fields) < 4 or fields[2] != "inet":
            continue
        dev, iface = fields[1].split("@")[0], ipaddress.ip_interface(fields[3])
        if iface.ip == host or (dev != own and iface.network.overlaps(subnet)):
            found.append(f"{dev} {iface}")
    return found


def main() -> int:
    lab_ip, gateway, prefix, own = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    out = subprocess.run(["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True, check=True).stdout
    print(json.dumps(clashes(lab_ip, gateway, prefix, own, out.splitlines())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
