//! Outcomes as Standard Webhooks: which endpoints an event goes to (`Routes`),
//! how it is signed (`sign`), where a per-watch URL may point (`ssrf`), and the
//! dispatcher that delivers, retries and records every attempt (`dispatcher`).

pub mod dispatcher;
pub mod sign;
pub mod ssrf;

use crate::config::WebhookSettings;
use crate::model::Outcome;
use crate::store::{NewDelivery, NewEvent, Target, WatchRecord};
use crate::view;

/// Decides, when an outcome is stored, which deliveries its event gets.
#[derive(Debug, Clone)]
pub struct Routes {
    endpoints: Vec<(String, Option<Vec<String>>)>,
}

impl Routes {
    pub fn new(settings: &WebhookSettings) -> Routes {
        Routes {
            endpoints: settings
                .endpoints
                .iter()
                .map(|e| (e.url.to_string(), e.events.clone()))
                .collect(),
        }
    }

    /// The event of `w`'s outcome (already set on `w`), or `None` for outcomes
    /// that are not events (a cancellation).
    pub fn event_for(&self, w: &WatchRecord) -> Option<NewEvent> {
        let event_type = w.outcome.and_then(Outcome::event_type)?;
        let mut deliveries = Vec::new();
        if let Some(url) = &w.webhook_url {
            deliveries.push(NewDelivery {
                target: Target::Watch,
                url: url.clone(),
            });
        }
        for (url, events) in &self.endpoints {
            if events
                .as_ref()
                .is_none_or(|list| list.iter().any(|e| e == event_type))
            {
                deliveries.push(NewDelivery {
                    target: Target::Endpoint,
                    url: url.clone(),
                });
            }
        }
        Some(NewEvent {
            event_type,
            body: view::event_body(event_type, w),
            deliveries,
        })
    }
}
