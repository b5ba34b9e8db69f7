//! The Panorama wire: session (GoTrue refresh), rest (PostgREST tables and RPC), functions
//! (edge functions), realtime (Phoenix over tungstenite), jobs (typed rows, claim/complete).
//! Owner: Connect (issue 4). Knows the wire, nothing about CLIs.
