"""Examples written as Powertools' idempotency documentation shows them, with Powertools'
imports. tests/compat/test_powertools_docs.py runs each one twice: as written (real
Powertools) and with ``aws_lambda_powertools.utilities.idempotency`` replaced by
``idempotence.compat.powertools`` and nothing else changed."""
