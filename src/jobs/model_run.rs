//! `model_run` jobs (PROTOCOL.md "model_run", providers.md). Owner: Providers (issue 5).
