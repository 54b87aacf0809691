"""Incidents: alert receivers, the incident service, Alertmanager silences,
PagerDuty and security e-mail escalation."""
