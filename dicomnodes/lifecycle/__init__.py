"""The archive's life cycle: delete, the disk guard, recycling and retention
rules, corrections (issue 15)."""
