"""`python3 -m bench.bare_ticker`: a process doing nothing but the 5 ms ticker.

Run beside a load, it is the floor of the loop figures under that load: how late a
wake-up comes when the only cause is the machine (the OS giving the CPU to the
streaming containers, dockerd and the daemon). It ticks until its stdin closes,
then prints one JSON line: {"ticks": n, "p99": seconds, "worst": seconds}.
"""

from __future__ import annotations

import asyncio
import json
import sys

from bench.stats import percentile
from bench.stream import Ticker


async def main() -> None:
    ticker = Ticker()
    ticker.start()
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)  # until the bench closes it
    await ticker.stop()
    late = ticker.late or [0.0]
    figures = {"ticks": len(ticker.late), "p99": percentile(late, 99), "worst": ticker.worst}
    print(json.dumps(figures))


if __name__ == "__main__":
    asyncio.run(main())
