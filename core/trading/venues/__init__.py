"""Venue implementations (ccxt, paper) and the venue service with failover.

The ``Venue`` protocol and order models live in ``core.models.venues``."""
