"""A small async inventory service with the classic asyncio bottlenecks built in.

Each ``BUG`` comment marks one of the slow patterns pytest-asyncbudget turns into a
failing test: a blocked loop, sync file and DNS I/O, CPU work on the loop, a leaked
task, a task that swallows cancellation, and a memory spike.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time


class Inventory:
    def __init__(self) -> None:
        self.items: dict[str, int] = {}
        self.events: list[str] = []

    async def load(self, path: str) -> None:
        # BUG: synchronous file I/O on the event loop thread.
        with open(path) as f:
            self.items = json.load(f)

    async def load_properly(self, path: str) -> None:
        def read() -> dict[str, int]:
            with open(path) as f:
                return json.load(f)

        self.items = await asyncio.to_thread(read)

    async def warehouse_address(self, host: str) -> str:
        # BUG: blocking DNS resolution on the loop (use loop.getaddrinfo).
        return socket.gethostbyname(host)

    async def restock(self) -> None:
        # BUG: a "quick" pause that blocks every other task.
        time.sleep(0.12)
        self.events.append("restocked")

    async def valuation(self) -> int:
        # BUG: CPU-bound work holding the GIL on the loop.
        return sum(i * i for i in range(2_000_000))

    async def start_auditor(self) -> asyncio.Task[None]:
        # BUG: a background task nobody stops.
        return asyncio.create_task(self._audit_forever(), name="auditor")

    async def _audit_forever(self) -> None:
        while True:
            await asyncio.sleep(0.05)

    async def start_stubborn_worker(self) -> asyncio.Task[None]:
        # BUG: swallows CancelledError, so shutdown waits for it forever.
        return asyncio.create_task(self._stubborn(), name="stubborn")

    async def _stubborn(self) -> None:
        while True:
            try:
                await asyncio.sleep(0.05)
            except asyncio.CancelledError:
                pass

    async def export(self) -> int:
        # BUG: builds a huge intermediate copy just to measure it.
        blob = json.dumps([dict(self.items) for _ in range(2_500)])
        return len(blob)

    async def get(self, key: str) -> int | None:
        await asyncio.sleep(0)
        return self.items.get(key)


async def echo_server() -> tuple[asyncio.AbstractServer, int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(1024):
            writer.write(data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]
