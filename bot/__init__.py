"""Telegram adapter (aiogram 3): routers per feature, middlewares, rendering, the outbox."""
