//! Command-line parsing (lexopt) into a command and options; help and version text.
//! Owner: Foundation (issue 2).
