//! Sends generated messages to a topic, at a rate, noting where the broker put each one.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;

use super::Generated;

/// Where each partition's messages ended: partition → next offset after the last one sent.
pub type EndOffsets = HashMap<i32, i64>;

/// Where the broker put each message.
#[derive(Debug, Default, Clone)]
pub struct Sent {
    /// (partition, offset) of each message, in the order given.
    pub positions: Vec<(i32, i64)>,
    pub ends: EndOffsets,
}

/// Sends `messages` to `topic` at up to `rate` messages/s (0: as fast as possible), printing
/// progress to stderr every `progress_every` (if set).
pub async fn send(
    producer: &FutureProducer,
    topic: &str,
    messages: &[Generated],
    rate: u32,
    progress_every: Option<Duration>,
) -> Result<Sent, rdkafka::error::KafkaError> {
    use futures::StreamExt;
    let started = Instant::now();
    let mut last_report = Instant::now();
    let mut sent = Sent::default();
    let mut in_flight = futures::stream::FuturesOrdered::new();
    for (i, message) in messages.iter().enumerate() {
        if rate > 0 {
            let due = started + Duration::from_secs_f64(i as f64 / f64::from(rate));
            tokio::time::sleep_until(due.into()).await;
        }
        // Handed to librdkafka now, not when a delivery future is first polled: a send at a
        // rate must reach the broker at that rate, not in bursts of the deliveries awaited.
        let mut record = FutureRecord::to(topic)
            .key(&message.key)
            .payload(&message.value);
        let delivery = loop {
            match producer.send_result(record) {
                Ok(delivery) => break delivery,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    match in_flight.next().await {
                        Some(delivery) => record_delivery(Some(delivery), &mut sent)?,
                        None => tokio::time::sleep(Duration::from_millis(100)).await,
                    }
                }
                Err((error, _)) => return Err(error),
            }
        };
        in_flight.push_back(async move { delivery.await.map_err(|_| KafkaError::Canceled) });
        if in_flight.len() >= 10_000 {
            record_delivery(in_flight.next().await, &mut sent)?;
        }
        if progress_every.is_some_and(|every| last_report.elapsed() >= every) {
            last_report = Instant::now();
            eprintln!(
                "produced {}/{} ({:.0} msg/s)",
                i + 1,
                messages.len(),
                (i + 1) as f64 / started.elapsed().as_secs_f64()
            );
        }
    }
    while let Some(delivery) = in_flight.next().await {
        record_delivery(Some(delivery), &mut sent)?;
    }
    Ok(sent)
}

type Delivery = Result<rdkafka::producer::future_producer::OwnedDeliveryResult, KafkaError>;

fn record_delivery(delivery: Option<Delivery>, sent: &mut Sent) -> Result<(), KafkaError> {
    match delivery {
        Some(Ok(Ok(d))) => {
            sent.positions.push((d.partition, d.offset));
            let end = sent.ends.entry(d.partition).or_insert(0);
            *end = (*end).max(d.offset + 1);
            Ok(())
        }
        Some(Ok(Err((error, _))) | Err(error)) => Err(error),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A paced send puts each message on the broker at its time, not all of them at the end.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_paced_send_reaches_the_broker_while_it_runs() {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        let mock = rdkafka::mocking::MockCluster::new(1).unwrap();
        mock.create_topic("paced", 1, 1).unwrap();
        let brokers = mock.bootstrap_servers();
        let producer: FutureProducer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("linger.ms", "0")
            .create()
            .unwrap();
        let messages: Vec<Generated> = (0..40)
            .map(|i| Generated {
                key: vec![i],
                value: vec![i],
                malformed: None,
            })
            .collect();
        let sending =
            tokio::spawn(
                async move { send(&producer, "paced", &messages, 10, None).await.unwrap() },
            );
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        let watcher: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .create()
            .unwrap();
        let (_, midway) = watcher
            .fetch_watermarks("paced", 0, Duration::from_secs(5))
            .unwrap();
        // 40 messages at 10/s take 4 s: after 1.5 s some are on the broker, not all.
        assert!(
            (1..40).contains(&midway),
            "{midway} of 40 on the broker after 1.5 s"
        );
        let sent = sending.await.unwrap();
        assert_eq!(sent.ends[&0], 40);
    }
}
