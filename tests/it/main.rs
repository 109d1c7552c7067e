//! The integration tests, one binary (Cargo's `it` target) so that the harness is built once:
//! the built `cmqhook` over real HTTP on 127.0.0.1, real processes, real SQLite.

mod harness;
mod pg;
mod standin;

mod browser;
mod cli;
mod console;
mod delivery;
mod end_log;
mod faults;
mod guard;
mod journal_file;
mod notify;
mod one_state;
mod operations;
mod operator;
mod package;
mod pg_fleet;
mod pg_records;
mod pg_replay;
mod pg_state;
mod pg_stored;
mod postgres;
mod properties;
mod pull;
mod pull_client;
mod pull_python;
mod push;
mod queue_send;
mod records;
mod replay;
mod security;
mod stored;
