CREATE TABLE IF NOT EXISTS "idempotency" (
    key              text PRIMARY KEY,
    status           text NOT NULL CHECK (status IN ('IN_PROGRESS', 'COMPLETED')),
    fingerprint      text NOT NULL,
    fence            bigint NOT NULL,
    lease_expires_at double precision NOT NULL,  -- epoch seconds
    expires_at       double precision NOT NULL,  -- epoch seconds, end of retention
    result           bytea
)  -- room on each page keeps complete/renew/release updates HOT
WITH (fillfactor = 80);
