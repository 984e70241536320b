"""Powertools' ``persistence`` package paths (``persistence.dynamodb``...)."""
