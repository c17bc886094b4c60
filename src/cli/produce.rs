//! `tenantstream produce`: realistic order traffic to the orders topic.

use std::time::{Duration, Instant};

use anyhow::Context;
use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::Args;

use crate::config::Settings;
use crate::decode::Encoder;
use crate::domain::ValidOrder;
use crate::source;
use crate::tools::traffic::{self, TrafficSpec, WireFormat};

/// Flags of `tenantstream produce`.
#[derive(Args, Debug, Clone)]
pub struct ProduceArgs {
    /// Messages to send in all (valid, duplicates and malformed).
    #[arg(long, default_value_t = 10_000)]
    pub count: usize,
    /// Messages per second; 0 sends as fast as the broker takes them.
    #[arg(long, default_value_t = 0)]
    pub rate: u32,
    /// Number of tenants.
    #[arg(long, default_value_t = 10)]
    pub tenants: usize,
    /// Share of malformed messages (0.0 to 1.0), which must end in the dead-letter topic.
    #[arg(long, default_value_t = 0.01)]
    pub malformed: f64,
    /// Share of events sent twice.
    #[arg(long, default_value_t = 0.05)]
    pub duplicates: f64,
    /// Share of orders whose two newest versions arrive swapped.
    #[arg(long, default_value_t = 0.05)]
    pub reorder: f64,
    /// Wire format of the values: 0x00 + schema id (confluent), 0xC3 0x01 + fingerprint
    /// (single-object), or alternating (mixed).
    #[arg(
        long,
        default_value = "confluent",
        value_parser = PossibleValuesParser::new(WireFormat::NAMES).map(|s| s.parse::<WireFormat>().expect("a listed name"))
    )]
    pub format: WireFormat,
    /// Seed for repeatable traffic (random when absent).
    #[arg(long)]
    pub seed: Option<u64>,
}

impl ProduceArgs {
    pub fn spec(&self) -> anyhow::Result<TrafficSpec> {
        for (name, share) in [
            ("--malformed", self.malformed),
            ("--duplicates", self.duplicates),
            ("--reorder", self.reorder),
        ] {
            anyhow::ensure!(
                (0.0..=1.0).contains(&share),
                "{name} must be between 0 and 1"
            );
        }
        anyhow::ensure!(self.tenants > 0, "--tenants must be at least 1");
        Ok(TrafficSpec {
            count: self.count,
            tenants: self.tenants,
            malformed: self.malformed,
            duplicates: self.duplicates,
            reorder: self.reorder,
            format: self.format,
            seed: self.seed.unwrap_or_else(rand::random),
            ..Default::default()
        })
    }
}

/// `tenantstream produce`.
pub async fn produce(settings: &Settings, args: &ProduceArgs) -> anyhow::Result<()> {
    let spec = args.spec()?;
    let encoder = Encoder::for_event::<ValidOrder>(&settings.schemas)?;
    let (messages, expected) = traffic::generate(&spec, &encoder);
    let producer = source::producer(&settings.kafka)?;
    let topic = &settings.kafka.orders_topic;
    let started = Instant::now();
    let progress = Some(Duration::from_secs(2));
    let sent = traffic::send(&producer, topic, &messages, args.rate, progress)
        .await
        .with_context(|| format!("producing to {topic} at {}", settings.kafka.brokers))?;
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "sent {} messages to {topic} in {elapsed:.1}s ({:.0} msg/s): {} orders of {} tenants, {} malformed (seed {})",
        messages.len(),
        messages.len() as f64 / elapsed,
        expected.orders.len(),
        expected.tenants.len(),
        messages.iter().filter(|m| m.malformed.is_some()).count(),
        spec.seed,
    );
    let mut ends: Vec<_> = sent.ends.into_iter().collect();
    ends.sort();
    println!("end offsets by partition: {ends:?}");
    Ok(())
}
