//! cmqhook turns Tencent Cloud CMQ topic pushes into shell commands.
//!
//! A push's path through the crate:
//! 1. [`http`] accepts a POST, enforces the body limit, and reads the CMQ headers;
//! 2. [`cmq`] turns headers and body into a [`cmq::Push`] (JSON envelope or SIMPLIFIED);
//! 3. [`routing`] picks every hook of the [`config`] whose selectors match;
//! 4. [`dispatch`] starts a [`runner`] run per hook on its own runtime and waits for outcomes;
//! 5. [`http`] turns the [`dispatch::Answer`] into a status: 2xx only if every command exited 0.
//!
//! [`cli`] is the command line; [`telemetry`] sets up logging.

pub mod access;
pub mod cli;
pub mod cmq;
pub mod config;
pub mod dispatch;
pub mod http;
pub mod journal;
pub mod routing;
pub mod runner;
pub mod send;
pub mod service;
pub mod telemetry;
