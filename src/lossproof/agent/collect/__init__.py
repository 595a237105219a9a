"""Collectors: where the agent's points come from (host metrics, StatsD; ``Agent.record`` in-process)."""
