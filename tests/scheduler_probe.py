"""A service-like process running the real scheduler with a 1-second probe job.

``python -m tests.scheduler_probe SECONDS OUT.json``: the job writes (slot, pid) to
``scheduler_probe``; OUT.json gets how often this process fired and how often it ran.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from datetime import UTC, datetime
from typing import Any

from apscheduler.events import EVENT_JOB_EXECUTED, JobExecutionEvent
from sqlalchemy import text

from app.db import dispose_engines, unit_of_work
from app.jobs.scheduler import JobSpec, build_scheduler, slot_for


async def probe() -> dict[str, Any]:
    slot = slot_for(datetime.now(UTC), 1).isoformat()
    async with unit_of_work() as session:
        await session.execute(
            text("INSERT INTO scheduler_probe (slot, pid) VALUES (:s, :p)"), {"s": slot, "p": os.getpid()}
        )
    return {"slot": slot}


async def main(seconds: float, out: str) -> None:
    counts = {"fired": 0, "ran": 0}

    def listener(event: JobExecutionEvent) -> None:
        counts["fired"] += 1
        counts["ran"] += int(bool(event.retval))

    scheduler = build_scheduler([JobSpec("test.probe", probe, 1)])
    scheduler.add_listener(listener, EVENT_JOB_EXECUTED)
    scheduler.start()
    await asyncio.sleep(seconds)
    scheduler.shutdown(wait=False)
    await dispose_engines()
    with open(out, "w") as fh:
        json.dump(counts, fh)


if __name__ == "__main__":
    asyncio.run(main(float(sys.argv[1]), sys.argv[2]))
