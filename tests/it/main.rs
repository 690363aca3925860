//! The integration tests: one binary, real parts only. Each test starts the
//! simulator and the daemon on random ports with a temporary SQLite file, and
//! talks to them over HTTP; webhooks go to real receivers.

mod helpers;
mod receiver;

mod core;
mod python_receiver;
mod webhooks;
mod postgres;
mod cli;
mod upstream;
mod crash;
mod durability;
mod metrics;
