//! The integration tests: one binary, real parts only. Each test starts the
//! simulator and the daemon on random ports with a temporary SQLite file, and
//! talks to them over HTTP; webhooks go to real receivers.

mod helpers;
mod receiver;
mod replicas;

mod bench;
mod cadence;
mod cli;
mod core;
mod counts;
mod crash;
mod durability;
mod events;
mod metrics;
mod postgres;
mod python_receiver;
mod upstream;
mod upstreams;
mod webhooks;
