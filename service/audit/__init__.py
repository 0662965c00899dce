"""The audit trail: who changed what, when and from where, captured for every write (issue 6)."""
