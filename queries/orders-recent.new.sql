-- orders-recent (new): take the 20 newest orders from orders_tenant_customer_created_idx
-- (already in created_at DESC, id DESC order, no sort), then count lines for those only.
SELECT o.id, o.status, o.total, o.created_at, o.shipped_at, i.item_count
  FROM (
        SELECT id, status, total, created_at, shipped_at
          FROM orders
         WHERE tenant_id = (SELECT id FROM tenants WHERE slug = %(tenant)s)
           AND customer_id = %(customer_id)s
         ORDER BY created_at DESC, id DESC
         LIMIT 20
       ) o
 CROSS JOIN LATERAL (
        SELECT count(*) AS item_count FROM order_items oi WHERE oi.order_id = o.id
       ) i
 ORDER BY o.created_at DESC, o.id DESC
