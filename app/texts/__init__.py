"""Free text (chats, tickets, social posts): stored redacted, with the PII in a per-person vault."""
