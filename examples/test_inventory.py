"""The demo suite: run it with the plugin to see each bottleneck caught and named."""

import asyncio

import pytest

from inventory import echo_server


# --- clean tests: these pass every budget ------------------------------------------
async def test_lookup_is_fast(inventory):
    assert await inventory.get("sku-7") == 7


async def test_many_concurrent_lookups(inventory):
    results = await asyncio.gather(*(inventory.get(f"sku-{i}") for i in range(2_000)))
    assert results[:3] == [0, 1, 2]


async def test_tcp_echo_round_trips():
    server, port = await echo_server()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for _ in range(200):
        writer.write(b"ping")
        assert await reader.readexactly(4) == b"ping"
    writer.close()
    await writer.wait_closed()
    server.close()
    await server.wait_closed()


async def test_load_in_a_thread(stock_file, inventory):
    await inventory.load_properly(stock_file)
    assert len(inventory.items) == 500


# --- each of these trips one budget --------------------------------------------------
async def test_restock_blocks_the_loop(inventory):
    await inventory.restock()  # max_loop_lag and no_blocking: time.sleep on the loop


async def test_valuation_hogs_the_cpu(inventory):
    assert await inventory.valuation() > 0  # max_loop_lag: CPU work in a generator


async def test_load_reads_the_file_on_the_loop(stock_file):
    from inventory import Inventory

    inv = Inventory()
    await inv.load(stock_file)  # no_blocking: open() and read on the loop thread
    assert inv.items


async def test_address_lookup_blocks_on_dns(inventory):
    assert await inventory.warehouse_address("localhost")  # no_blocking: gethostbyname


async def test_auditor_is_left_running(inventory):
    await inventory.start_auditor()  # no_leaked_tasks: nobody stops the task


async def test_stubborn_worker_ignores_cancel(inventory):
    await inventory.start_stubborn_worker()  # no_leaked_tasks: it swallows CancelledError


@pytest.mark.max_rss("50 MB")
@pytest.mark.max_loop_lag(None)  # this one is about memory only
async def test_export_spikes_memory(inventory):
    assert await inventory.export() > 0  # max_rss: a huge transient copy
