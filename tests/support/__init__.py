"""Test support: real services started on loopback for the test suite."""
