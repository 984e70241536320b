"""Powertools' ``persistence.dynamodb`` path."""

from .._dynamodb import DynamoDBPersistenceLayer

__all__ = ["DynamoDBPersistenceLayer"]
