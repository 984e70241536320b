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


def test_public_classes_print_under_the_package_name() -> None:
    import pickle

    for name in idempotence.__all__:
        obj = getattr(idempotence, name)
        if isinstance(obj, type) and not getattr(obj, "_is_protocol", False):
            assert obj.__module__ == "idempotence", name
    error = idempotence.KeyReuseError("used before", key="k")
    assert repr(type(error)) == "<class 'idempotence.KeyReuseError'>"
    for exc in (
        error,
        idempotence.AlreadyInProgressError("busy", key="k", retry_after=2.5),
        idempotence.StoreError("down", key="k", result={"a": 1}),
    ):
        back = pickle.loads(pickle.dumps(exc))
        assert type(back) is type(exc)
        assert back.args == exc.args
        assert back.key == "k"
    assert pickle.loads(pickle.dumps(idempotence.Status.COMPLETED)) is idempotence.Status.COMPLETED
    from idempotence._errors import KeyReuseError  # the old import path still works

    assert KeyReuseError is idempotence.KeyReuseError
