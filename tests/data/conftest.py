"""Fixtures shared by the tests of dens.data: ``server``, the HTTP server on 127.0.0.1 of
test_download.py that logs every request (test_disk_space.py asserts that none was made)."""

from test_download import server  # noqa: F401 (a fixture)
