"""Rollback scripts proven before they are needed: scratch server, fingerprints, verification.

Its modules, each about one thing:

- ``fingerprint``: A schema's fingerprint from the catalogs, and its differences in plain words.
- ``scratch``: A throwaway local PostgreSQL for rollback verification, never the target's
  server.
- ``verify``: Rollback scripts proven before they are needed: verification on a throwaway local
  server, hazards of every statement, and applying the script for real.
"""

__all__ = [
    "fingerprint",
    "scratch",
    "verify",
]
