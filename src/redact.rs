//! Redaction of access/refresh tokens, JWTs and keys from anything that is logged or stored as
//! debug. Owner: Foundation (issue 2); used by every module that logs outside data.
