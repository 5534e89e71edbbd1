-- products-never-ordered: forward schema change, a partial index for catalog lookups
-- (custom lines, product_id NULL, are left out).
CREATE INDEX IF NOT EXISTS order_items_product_idx
    ON order_items (product_id)
    WHERE product_id IS NOT NULL;
