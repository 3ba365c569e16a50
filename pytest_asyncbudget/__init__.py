"""pytest-asyncbudget: performance budgets for async tests."""

__version__ = "0.1.0"
