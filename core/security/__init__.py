"""Who may do what, and the record of it: permissions, API tokens, secrets, the
hash-chained audit log and its exports."""
