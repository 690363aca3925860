//! jobwatch watches asynchronous jobs on an upstream API for many clients at once.
//!
//! Data flows one way: `api` writes watches into the `store`; the `poller` claims
//! due watches from the store, asks the `upstream`, and writes each state change and
//! outcome back (the outcome, its event and its deliveries in one transaction); the
//! `webhook` dispatcher claims due deliveries and sends them to receivers. `app`
//! wires these together from `config::Settings`; `simulator` is a stand-in upstream.

pub mod api;
pub mod app;
pub mod bench;
pub mod cli;
pub mod config;
pub mod metrics;
pub mod model;
pub mod poller;
pub mod simulator;
pub mod store;
pub mod telemetry;
pub mod upstream;
pub mod view;
pub mod webhook;
