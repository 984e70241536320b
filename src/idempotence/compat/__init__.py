"""Drop-in replacements for other idempotency libraries, over this library's engine.

- :mod:`idempotence.compat.powertools`: Powertools for AWS Lambda (Python)'s idempotency
  utility (same names and signatures, same DynamoDB/Redis record layout, so a fleet can
  move in either direction without a gap). See ``docs/migrating-from-powertools.md``.
"""
