"""A schema's fingerprint from the catalogs, and its differences in plain words.

Covers tables, columns (type, nullability, default), constraints, indexes, views, functions,
triggers, sequences (definition, not position) and grants, in every schema but the system
ones and the toolkit's own ``rollout``; beyond the schema, the cluster's roles (names and
attributes, never passwords) and the settings of this database and of roles, which a script
can change too. Owners are left out: a clone may be owned by whoever restored it.
"""

from __future__ import annotations

from typing import Any

import psycopg

Fingerprint = dict[tuple[str, str], str]

_EXCLUDED = "('pg_catalog', 'information_schema', 'rollout', 'pg_toast')"

_QUERIES: dict[str, str] = {
    "table": f"""
        SELECT n.nspname || '.' || c.relname, c.relkind::text || coalesce(' ' ||
               (SELECT string_agg(o, ',') FROM unnest(c.reloptions) o), '')
          FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE c.relkind IN ('r', 'p', 'f') AND n.nspname NOT IN {_EXCLUDED}
           AND n.nspname NOT LIKE 'pg_temp%%'""",
    "column": f"""
        SELECT n.nspname || '.' || c.relname || '.' || a.attname,
               format_type(a.atttypid, a.atttypmod)
               || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
               || coalesce(' default ' || pg_get_expr(d.adbin, d.adrelid), '')
               || CASE WHEN a.attidentity <> '' THEN ' identity ' || a.attidentity::text ELSE '' END
               || CASE WHEN a.attgenerated <> '' THEN ' generated' ELSE '' END
          FROM pg_attribute a
          JOIN pg_class c ON c.oid = a.attrelid
          JOIN pg_namespace n ON n.oid = c.relnamespace
          LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
         WHERE a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
           AND n.nspname NOT IN {_EXCLUDED}""",
    "constraint": f"""
        SELECT n.nspname || '.' || c.relname || '.' || con.conname,
               pg_get_constraintdef(con.oid)
          FROM pg_constraint con
          JOIN pg_class c ON c.oid = con.conrelid
          JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname NOT IN {_EXCLUDED}""",
    "index": f"""
        SELECT n.nspname || '.' || i.relname, pg_get_indexdef(i.oid)
          FROM pg_index x
          JOIN pg_class i ON i.oid = x.indexrelid
          JOIN pg_namespace n ON n.oid = i.relnamespace
         WHERE n.nspname NOT IN {_EXCLUDED}""",
    "view": f"""
        SELECT n.nspname || '.' || c.relname, pg_get_viewdef(c.oid)
          FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE c.relkind IN ('v', 'm') AND n.nspname NOT IN {_EXCLUDED}""",
    "function": f"""
        SELECT n.nspname || '.' || p.proname || '(' ||
               pg_get_function_identity_arguments(p.oid) || ')',
               pg_get_functiondef(p.oid)
          FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
         WHERE n.nspname NOT IN {_EXCLUDED} AND p.prokind IN ('f', 'p')
           AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = p.oid
                           AND d.deptype = 'e')""",
    "trigger": f"""
        SELECT n.nspname || '.' || c.relname || '.' || t.tgname, pg_get_triggerdef(t.oid)
          FROM pg_trigger t
          JOIN pg_class c ON c.oid = t.tgrelid
          JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE NOT t.tgisinternal AND n.nspname NOT IN {_EXCLUDED}""",
    "sequence": f"""
        SELECT n.nspname || '.' || c.relname,
               format('%%s start %%s increment %%s min %%s max %%s cycle %%s',
                      format_type(s.seqtypid, NULL), s.seqstart, s.seqincrement, s.seqmin,
                      s.seqmax, s.seqcycle)
          FROM pg_sequence s
          JOIN pg_class c ON c.oid = s.seqrelid
          JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname NOT IN {_EXCLUDED}""",
    "grant": f"""
        SELECT n.nspname || '.' || c.relname || ' to ' ||
               CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(a.grantee) END,
               string_agg(a.privilege_type, ', ' ORDER BY a.privilege_type)
          FROM pg_class c
          JOIN pg_namespace n ON n.oid = c.relnamespace
          CROSS JOIN LATERAL aclexplode(c.relacl) a
         WHERE c.relacl IS NOT NULL AND n.nspname NOT IN {_EXCLUDED}
           AND a.grantee <> c.relowner
         GROUP BY 1""",
    "role": """
        SELECT rolname, concat_ws(' ', CASE WHEN rolsuper THEN 'superuser' END,
               CASE WHEN rolcreaterole THEN 'createrole' END,
               CASE WHEN rolcreatedb THEN 'createdb' END,
               CASE WHEN rolcanlogin THEN 'login' END,
               CASE WHEN rolreplication THEN 'replication' END,
               CASE WHEN rolbypassrls THEN 'bypassrls' END,
               CASE WHEN NOT rolinherit THEN 'noinherit' END, 'role')
          FROM pg_roles WHERE rolname !~ '^pg_'""",
    "setting": """
        SELECT split_part(c, '=', 1) || CASE
                 WHEN s.setrole = 0 THEN ' (this database)'
                 WHEN s.setdatabase = 0 THEN ' (role ' || pg_get_userbyid(s.setrole) || ')'
                 ELSE ' (role ' || pg_get_userbyid(s.setrole) || ' in this database)' END,
               substr(c, strpos(c, '=') + 1)
          FROM pg_db_role_setting s CROSS JOIN LATERAL unnest(s.setconfig) c
         WHERE s.setdatabase IN (0, (SELECT oid FROM pg_database
                                      WHERE datname = current_database()))""",
}


def fingerprint(conn: psycopg.Connection[Any]) -> Fingerprint:
    """(kind, name) → definition for every object that matters to a rollback."""
    out: Fingerprint = {}
    for kind, query in _QUERIES.items():
        for name, definition in conn.execute(query.encode()).fetchall():
            out[(kind, str(name))] = str(definition)
    return out


def differences(before: Fingerprint, after: Fingerprint) -> list[str]:
    """What ``after`` has that ``before`` had not, and the reverse, in words."""
    words = []
    for key in sorted(set(before) | set(after)):
        kind, name = key
        shown = _short(name)
        if key not in before:
            words.append(f"{kind} {shown} still exists")
        elif key not in after:
            words.append(f"{kind} {shown} is missing")
        elif before[key] != after[key]:
            words.append(f"{kind} {shown} differs: was {before[key]!r}, now {after[key]!r}")
    return words


def _short(name: str) -> str:
    return name.removeprefix("public.")
