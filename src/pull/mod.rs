//! Pull mode (SPEC §11): messages taken from CMQ queues over the signed legacy v2 queue API,
//! for a host that CMQ cannot push to. [`client`] speaks the API (requests signed by
//! [`signature`], answers and error codes as types); it neither routes nor runs anything.

pub mod client;
pub mod signature;

pub use client::{ErrorKind, HandleError, QueueClient, QueueError, Received};
