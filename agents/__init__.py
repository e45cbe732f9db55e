"""DQN agents and the prompt defender (filled in by the PPD core issue)."""
