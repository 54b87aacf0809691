"""Tests of the shipped Prometheus and Alertmanager configs and the service helpers."""
