-- order-ship: forward schema change. An order's tenant_id must be its customer's tenant, so
-- scoping by orders.tenant_id (new path) equals scoping through customers (legacy path).
-- Re-runnable: drops what it is about to add first.
ALTER TABLE orders DROP CONSTRAINT IF EXISTS orders_customer_same_tenant_fk;
ALTER TABLE customers DROP CONSTRAINT IF EXISTS customers_tenant_id_id_key;
ALTER TABLE customers ADD CONSTRAINT customers_tenant_id_id_key UNIQUE (tenant_id, id);
ALTER TABLE orders ADD CONSTRAINT orders_customer_same_tenant_fk
    FOREIGN KEY (tenant_id, customer_id) REFERENCES customers (tenant_id, id);
