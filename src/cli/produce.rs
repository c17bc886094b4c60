//! `tenantstream produce`: realistic configuration changes to the configuration topic, then
//! order traffic for the same tenants to the orders topic; prints where each partition ended.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::Args;

use crate::config::Settings;
use crate::decode::Encoder;
use crate::domain::{ValidConfig, ValidOrder};
use crate::source;
use crate::tools::traffic::{self, Generated, Sent, TrafficSpec, WireFormat};

/// Flags of `tenantstream produce`.
#[derive(Args, Debug, Clone)]
pub struct ProduceArgs {
    /// Order messages to send in all (valid, duplicates and malformed); configuration changes
    /// are counted apart (--config-changes).
    #[arg(long, default_value_t = 10_000)]
    pub count: usize,
    /// Messages per second (configuration changes and orders alike); 0 sends as fast as the
    /// broker takes them.
    #[arg(long, default_value_t = 0)]
    pub rate: u32,
    /// Number of tenants.
    #[arg(long, default_value_t = 10)]
    pub tenants: usize,
    /// Configuration changes to send first, to the configuration topic, for the same tenants:
    /// a profile for each tenant (so that it ends `active`; a tenant with orders only stays
    /// `provisional`), then settings, SLA policies and profile updates, with about a tenth left
    /// for shared categories. Fewer than --tenants gives a profile to the first N tenants only;
    /// 0 sends none. [default: 10 per tenant: every tenant ends active, with a few settings and
    /// SLA policies, as a real tenant would]
    #[arg(long, value_name = "N")]
    pub config_changes: Option<usize>,
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

    /// `--config-changes`, or its default of 10 per tenant.
    fn config_changes(&self) -> usize {
        self.config_changes
            .unwrap_or_else(|| self.tenants.saturating_mul(10))
    }
}

/// `tenantstream produce`: configuration changes first, so that the worker meets each tenant's
/// profile before (or soon after) its first order.
pub async fn produce(settings: &Settings, args: &ProduceArgs) -> anyhow::Result<()> {
    let spec = args.spec()?;
    let encoder = Encoder::for_event::<ValidOrder>(&settings.schemas)?;
    let (messages, expected) = traffic::generate(&spec, &encoder);
    let config_encoder = Encoder::for_event::<ValidConfig>(&settings.schemas)?;
    // The order traffic's tenants, as the demo does, so that the profiles are theirs.
    let config = traffic::generate_config_sized(
        &expected.tenants,
        args.config_changes(),
        &format!("produce-{:x}-cat-", spec.seed),
        spec.seed,
        &config_encoder,
    );
    let producer = source::producer(&settings.kafka)?;

    if !config.messages.is_empty() {
        let topic = &settings.kafka.config_topic;
        let (sent, elapsed) = send_all(&producer, settings, topic, &config.messages, args).await?;
        println!(
            "sent {} configuration changes to {topic} in {elapsed:.1}s ({:.0} msg/s): a profile \
             for each of {} tenants (status active), {} more tenant changes (settings, SLA \
             policies, profile updates), {} category changes (seed {})",
            config.messages.len(),
            config.messages.len() as f64 / elapsed,
            config.profiled,
            config.tenant_changes,
            config.category_changes,
            spec.seed,
        );
        print!("{}", end_offsets_table(&sent));
    }

    let topic = &settings.kafka.orders_topic;
    let (sent, elapsed) = send_all(&producer, settings, topic, &messages, args).await?;
    println!(
        "sent {} order messages to {topic} in {elapsed:.1}s ({:.0} msg/s): {} orders of {} tenants, {} malformed (seed {})",
        messages.len(),
        messages.len() as f64 / elapsed,
        expected.orders.len(),
        expected.tenants.len(),
        messages.iter().filter(|m| m.malformed.is_some()).count(),
        spec.seed,
    );
    print!("{}", end_offsets_table(&sent));
    println!(
        "tenants, once the worker has read both topics: {} active (a profile each), {} \
         provisional (orders only, until a profile of theirs arrives)",
        config.profiled,
        expected.tenants.len() - config.profiled
    );
    Ok(())
}

/// Sends `messages` to `topic` at `--rate`, with progress on stderr; returns where they went
/// and the seconds it took.
async fn send_all(
    producer: &rdkafka::producer::FutureProducer,
    settings: &Settings,
    topic: &str,
    messages: &[Generated],
    args: &ProduceArgs,
) -> anyhow::Result<(Sent, f64)> {
    let started = Instant::now();
    let progress = Some(Duration::from_secs(2));
    let sent = traffic::send(producer, topic, messages, args.rate, progress)
        .await
        .with_context(|| format!("producing to {topic} at {}", settings.kafka.brokers))?;
    Ok((sent, started.elapsed().as_secs_f64()))
}

/// One line per partition this run sent to: its end offset after the run (the next offset to
/// be written, as far as this run saw) and how many of the messages went there.
fn end_offsets_table(sent: &Sent) -> String {
    let mut per_partition: BTreeMap<i32, (i64, usize)> = BTreeMap::new();
    for &(partition, offset) in &sent.positions {
        let (end, count) = per_partition.entry(partition).or_default();
        *end = (*end).max(offset + 1);
        *count += 1;
    }
    let mut table = format!(
        "  {:>9}  {:>12}  {:>13}\n",
        "partition", "end offset", "sent this run"
    );
    for (partition, (end, count)) in per_partition {
        table += &format!("  {partition:>9}  {end:>12}  {count:>13}\n");
    }
    table
}
