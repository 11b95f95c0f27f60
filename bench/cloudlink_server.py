"""Launch CloudLink 0.2.0.1's server with only its Scratch cloud-variable protocol enabled.

Run by bench/.venv-cloudlink/bin/python (CloudLink needs websockets==10.4, kept out of the
project's environment):

    bench/.venv-cloudlink/bin/python bench/cloudlink_server.py --port 9082

CloudLink's Scratch dialect differs from TurboWarp's: every set/create must carry project_id
(the room is taken from each message, not from the handshake), a set is also echoed back to its
sender, identical values are not re-broadcast, and each dump line is its own message.
It has no /healthz; readiness is checked by opening a TCP connection.
"""

from __future__ import annotations

import argparse
import logging

from cloudlink import server
from cloudlink.server.protocols import scratch

if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=9082)
    a = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    srv = server()
    srv.logging.getLogger("cloudlink").setLevel(logging.ERROR)
    scratch(srv)  # registers the Scratch protocol's handlers on the server
    srv.run(ip=a.host, port=a.port)
