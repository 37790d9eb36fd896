"""What the bot tells people and records: events, the message outbox, the ops
channel and the audit trail."""
