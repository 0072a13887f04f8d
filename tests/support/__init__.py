"""Set-up shared by the tests (through conftest.py) and the measurement scripts of tests/."""
