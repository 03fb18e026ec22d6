-- One-time PostgreSQL set-up for carbonlink (run as a superuser). The gateways create and
-- migrate their schema themselves at start-up (Alembic, serialized by an advisory lock),
-- which needs the btree_gist extension for the ledger's exclusion constraint.
CREATE ROLE carbonlink LOGIN;
CREATE DATABASE carbonlink OWNER carbonlink;
\connect carbonlink
CREATE EXTENSION IF NOT EXISTS btree_gist;
