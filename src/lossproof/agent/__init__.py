"""The lossproof monitoring agent (docs/agent.md): ``Agent(config)``, ``record()``, ``start()/stop()``."""

from lossproof.agent.agent import Agent
from lossproof.agent.config import AgentConfig, load_config

__all__ = ["Agent", "AgentConfig", "load_config"]
