//! `projector subscriptions create|list|show|delete|consume`.

use std::io::Write;
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use super::{ClientError, Remote, number, print_json, segment, text};
use crate::subscriptions::Settings;

impl Remote {
    /// `projector subscriptions create`: creates it, or changes its settings.
    pub async fn put_subscription(
        &self,
        name: &str,
        settings: &Settings,
    ) -> Result<(), ClientError> {
        let body =
            serde_json::to_value(settings).map_err(|e| ClientError::Protocol(e.to_string()))?;
        let path = format!("/subscriptions/{}", segment(name));
        let status = self.call(Method::PUT, &path, Some(body)).await?;
        self.print_subscription(&status)
    }

    /// `projector subscriptions list`
    pub async fn list_subscriptions(&self) -> Result<(), ClientError> {
        let body = self.call(Method::GET, "/subscriptions", None).await?;
        if self.json {
            return print_json(&body);
        }
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "{:<24} {:<20} {:>10} {:>9} {:>7} {:>9} {:>9}",
            "NAME", "SOURCE", "FLOOR", "IN FLIGHT", "PARKED", "CONSUMERS", "LAG"
        )?;
        for s in body["subscriptions"].as_array().into_iter().flatten() {
            writeln!(
                out,
                "{:<24} {:<20} {:>10} {:>9} {:>7} {:>9} {:>9}",
                text(&s["name"]),
                text(&s["settings"]["source"]),
                number(&s["floor"]),
                number(&s["in_flight"]),
                number(&s["parked"]),
                number(&s["consumers"]),
                number(&s["lag"]),
            )?;
        }
        Ok(())
    }

    /// `projector subscriptions show NAME`
    pub async fn show_subscription(&self, name: &str) -> Result<(), ClientError> {
        let path = format!("/subscriptions/{}", segment(name));
        let status = self.call(Method::GET, &path, None).await?;
        self.print_subscription(&status)
    }

    /// `projector subscriptions delete NAME`
    pub async fn delete_subscription(&self, name: &str) -> Result<(), ClientError> {
        let path = format!("/subscriptions/{}", segment(name));
        self.call_empty(Method::DELETE, &path, None).await?;
        if !self.json {
            println!("deleted subscription {name}");
        }
        Ok(())
    }

    /// `projector subscriptions consume NAME`: long-polls and prints events as they come,
    /// acknowledging each batch once printed with `ack`; stops after `limit` events if given.
    pub async fn consume(
        &self,
        name: &str,
        consumer: Option<&str>,
        ack: bool,
        limit: Option<u64>,
    ) -> Result<(), ClientError> {
        let mut query = String::from("max=100&wait_ms=30000");
        if let Some(consumer) = consumer {
            query.push_str(&format!("&consumer={}", segment(consumer)));
        }
        let path = format!("/subscriptions/{}/events?{query}", segment(name));
        let ack_path = format!("/subscriptions/{}/ack", segment(name));
        let mut printed = 0u64;
        loop {
            let body = self.call(Method::GET, &path, None).await?;
            let events = body["events"].as_array().cloned().unwrap_or_default();
            let mut positions = Vec::with_capacity(events.len());
            for event in &events {
                if limit.is_some_and(|l| printed >= l) {
                    break;
                }
                if self.json {
                    println!("{event}");
                } else {
                    println!(
                        "{:>8}  {}@{}  {}  (attempt {})  {}",
                        number(&event["position"]),
                        text(&event["stream"]),
                        number(&event["revision"]),
                        text(&event["type"]),
                        number(&event["attempt"]),
                        event["data"]
                    );
                }
                positions.push(event["position"].clone());
                printed += 1;
            }
            std::io::stdout().flush()?;
            if ack && !positions.is_empty() {
                let body = json!({ "positions": positions });
                self.call_empty(Method::POST, &ack_path, Some(body)).await?;
            }
            if limit.is_some_and(|l| printed >= l) {
                return Ok(());
            }
            if events.is_empty() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }

    fn print_subscription(&self, s: &Value) -> Result<(), ClientError> {
        if self.json {
            return print_json(s);
        }
        let mut out = std::io::stdout().lock();
        let settings = &s["settings"];
        writeln!(out, "subscription  {}", text(&s["name"]))?;
        writeln!(out, "source        {}", text(&settings["source"]))?;
        let types: Vec<&str> = settings["event_types"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        if !types.is_empty() {
            writeln!(out, "event types   {}", types.join(", "))?;
        }
        writeln!(
            out,
            "settings      {} in flight at most, ack within {} ms, {} deliveries, {}",
            number(&settings["max_in_flight"]),
            number(&settings["ack_timeout_ms"]),
            number(&settings["max_deliveries"]),
            text(&settings["strategy"]),
        )?;
        writeln!(
            out,
            "floor         {} (head {}, lag {})",
            number(&s["floor"]),
            number(&s["head"]),
            number(&s["lag"])
        )?;
        writeln!(
            out,
            "now           {} in flight, {} waiting, {} parked, {} consumers, {:.0} events/s",
            number(&s["in_flight"]),
            number(&s["waiting"]),
            number(&s["parked"]),
            number(&s["consumers"]),
            s["events_per_second"].as_f64().unwrap_or(0.0)
        )?;
        Ok(())
    }
}
