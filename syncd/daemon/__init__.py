"""The long-running service: scheduling (targets and sources), the inbox, health, the webhook
sender, the worker that re-reads what provider webhooks named (``hook_worker``), and a clean
lifecycle."""
