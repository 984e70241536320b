"""The infrastructure examples (examples/infrastructure: Serverless Framework, Terraform)
define the table DynamoDBStore uses: key schema and TTL attribute are checked against the
store, the Serverless table passes cfn-lint, and the store runs against a table created
(on moto) from each definition, with TTL enabled on the declared attribute."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import boto3
import hcl2
import pytest
import yaml

from idempotence import Idempotency
from idempotence.stores import DynamoDBStore
from idempotence.stores._dynamodb import CLOUDFORMATION_TEMPLATE
from tests import cfn_lint
from tests.moto_server import dynamodb_endpoint  # noqa: F401

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "infrastructure"
REGION = "us-east-1"
#: The only calls DynamoDBStore makes on the table (docs/stores.md).
STORE_ACTIONS = {"dynamodb:GetItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem"}


def store_table() -> dict[str, Any]:
    """What the store expects, from its own CloudFormation template."""
    properties: dict[str, Any] = yaml.safe_load(CLOUDFORMATION_TEMPLATE)["IdempotencyTable"][
        "Properties"
    ]
    return properties


def expected() -> tuple[list[tuple[str, str]], list[tuple[str, str]], str]:
    props = store_table()
    keys = [(k["AttributeName"], k["KeyType"]) for k in props["KeySchema"]]
    attrs = [(a["AttributeName"], a["AttributeType"]) for a in props["AttributeDefinitions"]]
    return keys, attrs, props["TimeToLiveSpecification"]["AttributeName"]


def test_store_template_matches_the_store_defaults() -> None:
    keys, _, ttl = expected()
    store = DynamoDBStore("idempotency")
    assert keys == [(store.key_attr, "HASH")]
    assert ttl == "expiration"


class _Loader(yaml.SafeLoader):
    """Templates are YAML with CloudFormation short-form tags (!GetAtt...)."""


_Loader.add_multi_constructor("!", lambda loader, suffix, node: None)


# -- CloudFormation -----------------------------------------------------------------------
def test_cloudformation_table_matches_the_store() -> None:
    template = yaml.load((EXAMPLE / "cloudformation.yaml").read_text(), Loader=_Loader)
    props = template["Resources"]["IdempotencyTable"]["Properties"]
    expected_props = {k: v for k, v in store_table().items() if k != "TableName"}
    assert {k: v for k, v in props.items() if k != "TableName"} == expected_props
    statement = template["Resources"]["IdempotencyAccess"]["Properties"]["PolicyDocument"]
    assert set(statement["Statement"][0]["Action"]) == STORE_ACTIONS


cfn_lint.register("infrastructure/cloudformation.yaml", EXAMPLE / "cloudformation.yaml")


def test_cloudformation_passes_cfn_lint() -> None:
    cfn_lint.assert_passes("infrastructure/cloudformation.yaml")


# -- Serverless Framework -----------------------------------------------------------------
def serverless() -> dict[str, Any]:
    data: dict[str, Any] = yaml.load((EXAMPLE / "serverless.yml").read_text(), Loader=_Loader)
    return data


def test_serverless_table_matches_the_store() -> None:
    config = serverless()
    props = config["resources"]["Resources"]["IdempotencyTable"]["Properties"]
    keys, attrs, ttl = expected()
    assert [(k["AttributeName"], k["KeyType"]) for k in props["KeySchema"]] == keys
    assert [(a["AttributeName"], a["AttributeType"]) for a in props["AttributeDefinitions"]] == (
        attrs
    )
    assert props["TimeToLiveSpecification"] == {"AttributeName": ttl, "Enabled": True}
    statement = config["provider"]["iam"]["role"]["statements"][0]
    assert set(statement["Action"]) == STORE_ACTIONS
    assert config["provider"]["environment"]["IDEMPOTENCE_STORE"] == (
        f"dynamodb://{props['TableName']}"
    )


def serverless_resources_template() -> str:
    """The resources of serverless.yml as a CloudFormation template (the table name
    resolved as for the dev stage)."""
    resources = serverless()["resources"]["Resources"]
    resources["IdempotencyTable"]["Properties"]["TableName"] = "orders-idempotency-dev"
    template = {"AWSTemplateFormatVersion": "2010-09-09", "Resources": resources}
    return yaml.safe_dump(template)


cfn_lint.register("infrastructure/serverless-resources", serverless_resources_template)


def test_serverless_resources_pass_cfn_lint() -> None:
    cfn_lint.assert_passes("infrastructure/serverless-resources")


# -- Terraform ----------------------------------------------------------------------------
def unquote(value: Any) -> Any:
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def terraform_table() -> dict[str, Any]:
    with (EXAMPLE / "terraform" / "main.tf").open() as f:
        config = hcl2.load(f)
    for block in config["resource"]:
        for kind, resources in block.items():
            if unquote(kind) == "aws_dynamodb_table":
                (table,) = resources.values()
                return {k: unquote(v) for k, v in table.items()}
    raise AssertionError("no aws_dynamodb_table in main.tf")


def test_terraform_table_matches_the_store() -> None:
    table = terraform_table()
    keys, attrs, ttl = expected()
    assert [(table["hash_key"], "HASH")] == keys
    assert "range_key" not in table
    assert [(unquote(a["name"]), unquote(a["type"])) for a in table["attribute"]] == attrs
    (ttl_block,) = table["ttl"]
    assert unquote(ttl_block["attribute_name"]) == ttl
    assert ttl_block["enabled"] is True
    assert table["billing_mode"] == "PAY_PER_REQUEST"


# -- the store against each definition (moto) ---------------------------------------------
def definitions() -> dict[str, tuple[list[tuple[str, str]], list[tuple[str, str]], str]]:
    props = serverless()["resources"]["Resources"]["IdempotencyTable"]["Properties"]
    table = terraform_table()
    return {
        "serverless": (
            [(k["AttributeName"], k["KeyType"]) for k in props["KeySchema"]],
            [(a["AttributeName"], a["AttributeType"]) for a in props["AttributeDefinitions"]],
            props["TimeToLiveSpecification"]["AttributeName"],
        ),
        "terraform": (
            [(table["hash_key"], "HASH")],
            [(unquote(a["name"]), unquote(a["type"])) for a in table["attribute"]],
            unquote(table["ttl"][0]["attribute_name"]),
        ),
    }


@pytest.mark.parametrize("tool", ["serverless", "terraform"])
def test_the_store_runs_on_the_declared_table(tool: str, dynamodb_endpoint: str) -> None:  # noqa: F811
    keys, attrs, ttl = definitions()[tool]
    name = f"iac-{tool}-{uuid.uuid4().hex[:8]}"
    client = boto3.client("dynamodb", region_name=REGION, endpoint_url=dynamodb_endpoint)
    client.create_table(
        TableName=name,
        BillingMode="PAY_PER_REQUEST",
        KeySchema=[{"AttributeName": n, "KeyType": t} for n, t in keys],
        AttributeDefinitions=[{"AttributeName": n, "AttributeType": t} for n, t in attrs],
    )
    client.update_time_to_live(
        TableName=name, TimeToLiveSpecification={"AttributeName": ttl, "Enabled": True}
    )
    try:
        store = DynamoDBStore(name, region=REGION, endpoint_url=dynamodb_endpoint)
        idem = Idempotency(store, ttl=60)
        calls: list[int] = []

        @idem(key="id")
        def charge(order: dict[str, Any]) -> int:
            calls.append(order["amount"])
            return len(calls)

        assert charge({"id": "o1", "amount": 5}) == 1
        assert charge({"id": "o1", "amount": 5}) == 1
        assert calls == [5]
        (item,) = client.scan(TableName=name)["Items"]
        assert ttl in item  # the store writes the attribute TTL is enabled on
        described = client.describe_time_to_live(TableName=name)["TimeToLiveDescription"]
        assert described["AttributeName"] == ttl
    finally:
        client.delete_table(TableName=name)


@pytest.mark.parametrize("variable", ["AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_DYNAMODB"])
def test_store_url_without_endpoint_uses_the_standard_variables(
    variable: str,
    dynamodb_endpoint: str,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """docs/infrastructure.md: with no endpoint_url, boto's endpoint variables apply."""
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_DYNAMODB"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(variable, dynamodb_endpoint)
    name = f"iac-env-{uuid.uuid4().hex[:8]}"
    store = DynamoDBStore(name, region=REGION)
    assert store.create_table()
    try:
        idem = Idempotency(f"dynamodb://{name}?region={REGION}")
        calls: list[int] = []

        @idem(key="id")
        def once(order: dict[str, Any]) -> int:
            calls.append(1)
            return len(calls)

        assert once({"id": "a"}) == once({"id": "a"}) == 1
    finally:
        boto3.client("dynamodb", region_name=REGION, endpoint_url=dynamodb_endpoint).delete_table(
            TableName=name
        )
