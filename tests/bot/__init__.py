"""Tests of the Telegram bot, driving real aiogram against a loopback fake Bot API."""
