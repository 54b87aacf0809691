"""Backups, verification, restore and off-site copies (runbook §3)."""
