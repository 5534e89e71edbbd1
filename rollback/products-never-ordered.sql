-- products-never-ordered: undo of rollback/products-never-ordered.deploy.sql.
DROP INDEX IF EXISTS order_items_product_idx;
