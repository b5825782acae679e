"""The job store: one table definition and its numbered migrations, SQLite (embedded) and
PostgreSQL (a fleet). Imports no other layer of the server.
"""
