"""The browser the web client is measured and tested in: Debian's Chromium, headless, kept off the network.

bench.web and tests/browser.py both launch it with these flags.
"""

from __future__ import annotations

CHROMIUM = "/usr/bin/chromium"  # browser downloads are not possible here: Debian's package
CHROMIUM_ARGS = [
    "--no-sandbox",  # root in a container-like machine
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    # This machine reaches no outside host: keep Chromium from trying.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
