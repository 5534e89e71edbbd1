-- orders-recent: undo of rollback/orders-recent.deploy.sql.
DROP INDEX IF EXISTS orders_tenant_customer_created_idx;
