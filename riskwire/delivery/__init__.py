"""Alert delivery: subscriptions, the outbox and its dispatcher, webhooks, Grafana, Alertmanager."""
