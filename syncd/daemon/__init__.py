"""The long-running service: scheduling (targets and sources), the inbox, health, the webhook
sender, and a clean lifecycle."""
