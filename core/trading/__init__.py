"""The trading engine: strategies (cores), risk, portfolio and venues."""
