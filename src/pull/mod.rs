//! Pull mode (SPEC §11): messages taken from CMQ queues over the signed legacy v2 queue API,
//! for a host that CMQ cannot push to. [`client`] speaks the API (requests signed by
//! [`signature`], answers and error codes as types); it neither routes nor runs anything.
//! [`poller`] consumes the configured queues: it receives, hands each message to the
//! dispatcher as a push, and deletes it when its outcome says so.

pub mod client;
pub mod poller;
pub mod signature;

pub use client::{ErrorKind, HandleError, QueueClient, QueueError, Received};
pub use poller::Consumer;
