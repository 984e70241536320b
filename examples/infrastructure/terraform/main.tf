# Terraform (AWS provider): the idempotency table and the policy a function needs.
# The table matches DynamoDBStore's defaults: partition key `id` (string), TTL on
# `expiration`. tests/examples/test_infrastructure.py parses this file, checks both and
# runs the store against a table created from this definition.

terraform {
  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.0"
    }
  }
}

variable "table_name" {
  type    = string
  default = "idempotency"
}

resource "aws_dynamodb_table" "idempotency" {
  name         = var.table_name
  billing_mode = "PAY_PER_REQUEST"
  hash_key     = "id"

  attribute {
    name = "id"
    type = "S"
  }

  ttl {
    attribute_name = "expiration"
    enabled        = true
  }
}

data "aws_iam_policy_document" "idempotency" {
  statement {
    actions   = ["dynamodb:GetItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem"]
    resources = [aws_dynamodb_table.idempotency.arn]
  }
}

resource "aws_iam_policy" "idempotency" {
  name   = "${var.table_name}-access"
  policy = data.aws_iam_policy_document.idempotency.json
}

output "idempotence_store" {
  description = "The value of IDEMPOTENCE_STORE for the functions"
  value       = "dynamodb://${aws_dynamodb_table.idempotency.name}"
}
