CREATE TABLE IF NOT EXISTS `idempotency` (
    `key`              VARBINARY(3072) NOT NULL PRIMARY KEY,
    `status`           VARCHAR(16) CHARACTER SET ascii NOT NULL
                       CHECK (`status` IN ('IN_PROGRESS', 'COMPLETED')),
    `fingerprint`      VARBINARY(1024) NOT NULL,
    `fence`            BIGINT NOT NULL,
    `lease_expires_at` DOUBLE NOT NULL,  -- epoch seconds
    `expires_at`       DOUBLE NOT NULL,  -- epoch seconds, end of retention
    `result`           LONGBLOB NULL
) ENGINE=InnoDB;
