-- order-ship: undo of rollback/order-ship.deploy.sql.
ALTER TABLE orders DROP CONSTRAINT IF EXISTS orders_customer_same_tenant_fk;
ALTER TABLE customers DROP CONSTRAINT IF EXISTS customers_tenant_id_id_key;
