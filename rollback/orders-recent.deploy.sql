-- orders-recent: forward schema change (deploy before shadowing the new path).
CREATE INDEX IF NOT EXISTS orders_tenant_customer_created_idx
    ON orders (tenant_id, customer_id, created_at DESC, id DESC);
