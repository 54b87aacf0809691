"""The assistant: LLM and rule-based answers over read-only tools (runbook §2.3)."""
