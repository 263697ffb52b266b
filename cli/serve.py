"""attnscope serve: the dashboard (Streamlit) on this machine's loopback address."""

from __future__ import annotations

import ipaddress
import subprocess
import sys
from pathlib import Path

from attnscope.cli.common import UsageError

__all__ = ["LOOPBACK", "cmd_serve", "register", "streamlit_command"]


LOOPBACK = "127.0.0.1"


def streamlit_command(address: str, port: int) -> list[str]:
    """The `streamlit run` command line for the packaged app, with attnscope's safe server settings."""
    app = Path(__file__).resolve().parents[1] / "ui" / "app.py"  # attnscope/ui/app.py, installed or in a checkout
    settings = {
        "server.address": address,
        "server.port": port,
        "server.headless": "true",
        "server.fileWatcherType": "none",  # a user runs the app, they do not edit it
        "server.enableXsrfProtection": "true",
        "browser.serverAddress": address,
        "browser.gatherUsageStats": "false",
        "client.toolbarMode": "minimal",
    }
    flags = [part for key, value in settings.items() for part in (f"--{key}", str(value))]
    return [sys.executable, "-m", "streamlit", "run", str(app), *flags]


def cmd_serve(args) -> str:
    """Serve the dashboard until Ctrl-C."""
    if not 0 < args.port < 65536:
        raise UsageError(f"--port {args.port}: use a port in 1..65535 (default 8501)")
    try:
        loopback = ipaddress.ip_address(args.address).is_loopback
    except ValueError:
        raise UsageError(f"--address {args.address!r}: give an IP address such as 127.0.0.1") from None
    if not loopback:
        print(
            f"warning: serving on {args.address}, reachable from other machines; read docs/security.md (no login, shared model)",
            file=sys.stderr,
        )
    print(f"attnscope dashboard on http://{args.address}:{args.port} (Ctrl-C stops it)", file=sys.stderr)
    try:
        code = subprocess.call(streamlit_command(args.address, args.port))
    except KeyboardInterrupt:
        code = 0
    if code not in (0, -2, 130):
        raise UsageError(f"the dashboard stopped with status {code}; is port {args.port} free? (try --port 8502)")
    return ""


def register(sub) -> None:
    p = sub.add_parser("serve", help="the dashboard in your browser (127.0.0.1 only unless --address says otherwise)")
    p.add_argument("--port", type=int, default=8501, help="TCP port (default 8501)")
    p.add_argument("--address", default=LOOPBACK, help="address to listen on (default 127.0.0.1: this machine only)")
    p.set_defaults(func=cmd_serve)
