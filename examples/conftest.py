import json

import pytest
import pytest_asyncio

from inventory import Inventory


@pytest.fixture
def stock_file(tmp_path):
    path = tmp_path / "stock.json"
    path.write_text(json.dumps({f"sku-{i}": i for i in range(500)}))
    return str(path)


@pytest_asyncio.fixture
async def inventory(stock_file):
    inv = Inventory()
    await inv.load_properly(stock_file)
    yield inv
