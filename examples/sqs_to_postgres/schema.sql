-- The business table of the example. The idempotency records table ("idempotency") is
-- created on first use; to create it in a migration instead, paste the output of
-- TransactionalIdempotency().migration_sql() here and pass auto_create=False.
CREATE TABLE IF NOT EXISTS payments (
    id           bigserial PRIMARY KEY,
    order_id     text   NOT NULL,
    amount_cents bigint NOT NULL
);
