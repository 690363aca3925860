#!/usr/bin/env python3
"""The poller a team would write by hand: the peer `jobwatch bench --operating-point`
measures jobwatch against.

One asyncio task per job, looping forever: GET the job's status (Vector's copy
status endpoint, its headers), parse the JSON state, sleep the fixed cadence. One
shared aiohttp session, at most 64 requests in flight (a semaphore). It keeps
nothing: no store, no webhooks, so what it costs is the least such a poller costs.

Ids come one a line on stdin. After `--duration` seconds it prints, as JSON, the
polls it made and how many of them answered a state.
"""

import argparse
import asyncio
import json
import random
import sys
import time
from urllib.parse import quote

import aiohttp


async def watch(session, sem, base, job_id, headers, cadence, stats, stop):
    url = f"{base}/products/{quote(job_id, safe='')}/search/copy/status"
    # Spread the first polls over one cadence, as a team's poller started on a
    # list of running jobs would (and as jobwatch's jitter does).
    await asyncio.sleep(random.uniform(0, cadence))
    while not stop.is_set():
        try:
            async with sem:
                async with session.get(url, headers=headers) as r:
                    stats["polls"] += 1
                    if r.status == 200:
                        doc = await r.json(content_type=None)
                        state = doc["data"]["attributes"]["state"]
                        if state:
                            stats["states"] += 1
                        if state in ("SUCCESS", "DONE", "FAILED", "FAILURE"):
                            return
                    else:
                        await r.read()
                        stats["errors"] += 1
        except (aiohttp.ClientError, asyncio.TimeoutError, KeyError, ValueError, TypeError):
            stats["errors"] += 1
        await asyncio.sleep(cadence)


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--base", required=True, help="the upstream's base URL")
    p.add_argument("--token", default="", help="sent as Authorization: Bearer")
    p.add_argument("--duration", type=float, required=True, help="seconds to run")
    p.add_argument("--cadence", type=float, default=5.0, help="seconds between a job's polls")
    p.add_argument("--concurrency", type=int, default=64)
    a = p.parse_args()

    ids = [line.strip() for line in sys.stdin if line.strip()]
    headers = {
        "Accept": "application/vnd.api+json",
        "Content-Type": "application/vnd.api+json",
    }
    if a.token:
        headers["Authorization"] = f"Bearer {a.token}"
    stats = {"polls": 0, "states": 0, "errors": 0}
    stop = asyncio.Event()
    sem = asyncio.Semaphore(a.concurrency)
    connector = aiohttp.TCPConnector(limit=a.concurrency)
    timeout = aiohttp.ClientTimeout(total=30)
    started = time.monotonic()
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        tasks = [
            asyncio.create_task(watch(session, sem, a.base, i, headers, a.cadence, stats, stop))
            for i in ids
        ]
        # Started: the bench measures from here (its warm-up, then its window).
        print(json.dumps({"started": len(tasks)}), flush=True)
        await asyncio.sleep(a.duration)
        stop.set()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    stats["jobs"] = len(ids)
    stats["seconds"] = time.monotonic() - started
    print(json.dumps(stats), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
