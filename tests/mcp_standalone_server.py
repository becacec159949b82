"""Serve the conformance fixtures on a standalone McpServer (no daemon).

    python tests/mcp_standalone_server.py [--port 0]

Prints ``READY http://127.0.0.1:PORT/mcp`` once listening, then serves until killed.
Used by the conformance-suite and TypeScript-SDK tests, and by hand:
``npx @modelcontextprotocol/conformance@0.1.16 server --url <that URL>``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _mcp_support import conformance_registry, serve_mcp


async def main(port: int) -> None:
    async with serve_mcp(
        conformance_registry(), port=port, instructions="tunneld conformance fixtures"
    ) as served:
        print(f"READY {served.url}", flush=True)
        await trio.sleep_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    try:
        trio.run(main, parser.parse_args().port)
    except KeyboardInterrupt:
        pass
