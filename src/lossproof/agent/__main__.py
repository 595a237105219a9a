from lossproof.agent.main import agent_command

agent_command(prog_name="lossproof agent")
