-- products-never-ordered (legacy): anti-join with NOT EXISTS (NULL-safe).
SELECT p.id, p.sku, p.name, p.price
  FROM products p
 WHERE p.tenant_id = (SELECT id FROM tenants WHERE slug = %(tenant)s)
   AND p.discontinued_at IS NULL
   AND NOT EXISTS (
        SELECT 1
          FROM order_items oi
          JOIN orders o ON o.id = oi.order_id
         WHERE o.customer_id = %(customer_id)s
           AND oi.product_id = p.id
       )
 ORDER BY p.id
