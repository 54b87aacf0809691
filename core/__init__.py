"""Lunia Core control plane: the services every adapter (bot, API, CLI, scheduler) calls."""

__version__ = "0.1.0"
