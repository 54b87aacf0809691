"""Operations views and automation: status, daily checklist, self-healing, signal
health, SLO guard, access review, scheduled jobs, Redis outage handling."""
