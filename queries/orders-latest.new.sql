-- orders-latest, new path: ids follow creation time, so the primary key gives the order.
SELECT o.id, o.status, o.total, o.created_at
  FROM orders o
 WHERE o.tenant_id = %(tenant_id)s
 ORDER BY o.id DESC
 LIMIT 20
