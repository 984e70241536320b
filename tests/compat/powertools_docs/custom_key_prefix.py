import os
from uuid import uuid4

from aws_lambda_powertools.utilities.idempotency import (
    DynamoDBPersistenceLayer,
    idempotent,
)

table = os.getenv("IDEMPOTENCY_TABLE", "")
persistence_layer = DynamoDBPersistenceLayer(table_name=table)


@idempotent(persistence_store=persistence_layer, key_prefix="my_custom_prefix")
def lambda_handler(event: dict, context) -> dict:
    return {"message": "success", "id": f"{uuid4()}", "statusCode": 200}
