"""Powertools' output serializers: turn a function's return value into the dict stored in
the record's ``data`` and back (``idempotent_function(output_serializer=...)``)."""

from __future__ import annotations

import dataclasses
import sys
import types
import typing
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

from ..exceptions import IdempotencyModelTypeError, IdempotencyNoSerializationModelError

__all__ = [
    "BaseIdempotencyModelSerializer",
    "BaseIdempotencySerializer",
    "CustomDictSerializer",
    "DataclassSerializer",
    "NoOpSerializer",
    "PydanticSerializer",
    "get_actual_type",
]


class BaseIdempotencySerializer(ABC):
    """Turns the stored dict into the returned object and back."""

    @abstractmethod
    def to_dict(self, data: Any) -> Any:
        """The JSON-ready form of a return value."""

    @abstractmethod
    def from_dict(self, data: Any) -> Any:
        """The return value rebuilt from its stored form."""


class BaseIdempotencyModelSerializer(BaseIdempotencySerializer):
    """A serializer built from the decorated function's return annotation: pass the class
    (``output_serializer=PydanticSerializer``) and ``instantiate`` is called with it."""

    @classmethod
    @abstractmethod
    def instantiate(cls, model_type: Any) -> BaseIdempotencySerializer:
        """A serializer for ``model_type`` (``None`` when the function has no annotation)."""


class NoOpSerializer(BaseIdempotencySerializer):
    """Stores and returns the value as it is (the default)."""

    def to_dict(self, data: Any) -> Any:
        return data

    def from_dict(self, data: Any) -> Any:
        return data


class CustomDictSerializer(BaseIdempotencySerializer):
    """Your own ``to_dict`` / ``from_dict`` functions."""

    def __init__(self, to_dict: Callable[[Any], Any], from_dict: Callable[[Any], Any]) -> None:
        self.__to_dict = to_dict
        self.__from_dict = from_dict

    def to_dict(self, data: Any) -> Any:
        return self.__to_dict(data)

    def from_dict(self, data: Any) -> Any:
        return self.__from_dict(data)


def get_actual_type(model_type: Any) -> Any:
    """``X`` from ``X``, ``Optional[X]`` or ``X | None``; other unions raise
    :class:`IdempotencyModelTypeError`."""
    origin = typing.get_origin(model_type)
    if origin is typing.Union or origin is types.UnionType:
        members = [a for a in typing.get_args(model_type) if a is not type(None)]
        if len(members) != 1:
            raise IdempotencyModelTypeError(
                "Invalid type: expected a single type, optionally wrapped in Optional or "
                "Union with None."
            )
        return members[0]
    return model_type


class DataclassSerializer(BaseIdempotencyModelSerializer):
    """A dataclass, stored as ``dataclasses.asdict``."""

    def __init__(self, model: type[Any]) -> None:
        self.__model = model

    def to_dict(self, data: Any) -> Any:
        return dataclasses.asdict(data)

    def from_dict(self, data: Any) -> Any:
        return self.__model(**data)

    @classmethod
    def instantiate(cls, model_type: Any) -> BaseIdempotencySerializer:
        model_type = get_actual_type(model_type)
        if model_type is None:
            raise IdempotencyNoSerializationModelError("No serialization model was supplied")
        if not (isinstance(model_type, type) and dataclasses.is_dataclass(model_type)):
            raise IdempotencyModelTypeError("Model type is not inherited of dataclass type")
        return cls(model=model_type)


class PydanticSerializer(BaseIdempotencyModelSerializer):
    """A pydantic (v2) model, stored as ``model_dump(mode="json")``."""

    def __init__(self, model: type[Any]) -> None:
        self.__model = model

    def to_dict(self, data: Any) -> Any:
        return data.model_dump(mode="json")

    def from_dict(self, data: Any) -> Any:
        return self.__model.model_validate(data)

    @classmethod
    def instantiate(cls, model_type: Any) -> BaseIdempotencySerializer:
        model_type = get_actual_type(model_type)
        if model_type is None:
            raise IdempotencyNoSerializationModelError("No serialization model was supplied")
        pydantic = sys.modules.get("pydantic")
        if pydantic is None or not (
            isinstance(model_type, type) and issubclass(model_type, pydantic.BaseModel)
        ):
            raise IdempotencyModelTypeError("Model type is not inherited from pydantic BaseModel")
        return cls(model=model_type)
