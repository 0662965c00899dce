"""Automated check-ins and replies: the outbox, the channels (SMS, calls, e-mail) and inbound answers."""
