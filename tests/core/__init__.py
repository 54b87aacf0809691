"""Tests of core services."""
