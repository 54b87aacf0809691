"""Loopback fakes of the third-party HTTP services the control plane talks to."""
