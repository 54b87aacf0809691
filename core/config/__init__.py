"""Settings and start-up checks: what the process is told and whether it may start."""
