"""Lock the public surface: additions are deliberate, removals are breaking."""

from __future__ import annotations

import idempotence
import idempotence.stores


def test_package_exports() -> None:
    assert set(idempotence.__all__) == {
        "AlreadyInProgressError", "Claim", "CorruptRecordError", "Idempotency",
        "IdempotencyConfig", "IdempotencyError", "IdempotentFunction", "InvalidKeyError",
        "JSONSerializer", "KeyReuseError", "LeaseLostError", "MissingDependencyError",
        "MissingKeyError", "Record", "ResultNotStoredError", "ResultTooLargeError",
        "Serializer", "Status",
        "StoreError", "StoredErrorReplay", "UnencodableError", "__version__",
        "current_key", "default_store_url", "idempotent", "idempotent_handler",
    }  # fmt: skip
    for name in idempotence.__all__:
        assert getattr(idempotence, name) is not None


def test_store_exports_resolve() -> None:
    for name in idempotence.stores.__all__:
        assert getattr(idempotence.stores, name) is not None


def test_every_error_is_an_idempotency_error() -> None:
    for name in idempotence.__all__:
        obj = getattr(idempotence, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert (
                issubclass(obj, idempotence.IdempotencyError) or obj is idempotence.UnencodableError
            )
