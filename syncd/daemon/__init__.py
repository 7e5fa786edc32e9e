"""The long-running service: scheduling, the inbox, health, and a clean lifecycle."""
