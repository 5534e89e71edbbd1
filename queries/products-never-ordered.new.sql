-- products-never-ordered (new): NOT IN over a nullable column. Custom order lines have
-- product_id NULL, and "x NOT IN (..., NULL)" is never true, so any customer with a custom
-- line gets an empty list. This is the bug the shadow run is meant to catch.
SELECT p.id, p.sku, p.name, p.price
  FROM products p
  JOIN tenants t ON t.id = p.tenant_id
 WHERE t.slug = %(tenant)s
   AND p.discontinued_at IS NULL
   AND p.id NOT IN (
        SELECT oi.product_id
          FROM order_items oi
          JOIN orders o ON o.id = oi.order_id
         WHERE o.customer_id = %(customer_id)s
       )
 ORDER BY p.id
