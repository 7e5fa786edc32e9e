"""The long-running service: scheduling, the inbox, health, the webhook sender, the worker that
re-reads what provider webhooks named (``hook_worker``), and a clean lifecycle."""
