//! `diagnostic` jobs (PROTOCOL.md §10). Owner: Providers (issue 5).
