//! panorama-local-backend: a Supabase-compatible emulator of the Panorama backend, for tests,
//! benchmarks and first runs. Self-contained: it does not use the gateway's modules.
//! Owner: Local backend (issue 3).

fn main() {}
