-- The new path of flags/example.yaml: same result, computed differently.
SELECT n AS id, n + n AS doubled
FROM generate_series(1, %(size)s) AS n
ORDER BY n
