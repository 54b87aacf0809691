"""The test suite: mirrors bot/, core/, api/; loopback fakes live in tests/fakes/."""
