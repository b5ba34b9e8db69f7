//! Provider CLIs: discovery, probing, health and capabilities; one file per CLI. Knows CLIs,
//! nothing about the wire. Owner: Providers (issue 5).

/// The discovered provider CLIs (filled in by issue 5).
#[derive(Debug, Default)]
pub struct Registry {}
