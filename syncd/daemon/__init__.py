"""The long-running service: scheduling, the inbox, health, the webhook sender, and a clean
lifecycle."""
