//! No offset is skipped silently: from the stored offset to the end of a partition, every
//! offset is either processed or counted in `tenantstream_offsets_skipped_total`. Broker:
//! tansu, whose 0.6.0 answers a fetch from an offset inside a multi-record batch with the next
//! batch: the worker starting mid-batch is exactly the case that skipped records unseen.

use std::collections::HashSet;
use std::time::Duration;

use rdkafka::producer::{FutureProducer, FutureRecord};
use tenantstream::testing::domain::{self, OrderEvent};
use tenantstream::testing::metrics::{install_recorder, OFFSETS_SKIPPED, OFFSET_GAPS};
use tenantstream::testing::traffic::EndOffsets;
use tenantstream::Health;
use uuid::Uuid;

use crate::support;

/// Records per producer batch, and batches.
const PER_BATCH: i64 = 10;
const BATCHES: i64 = 2;
/// Where the worker starts: inside the first batch.
const STORED: i64 = 5;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_offset_after_the_stored_one_is_processed_or_counted_as_skipped() {
    let metrics = install_recorder();
    let (settings, admin, _redis) = support::tansu_setup("gaps").await;
    let topic = settings.kafka.orders_topic.clone();
    let tenant = Uuid::new_v4();
    let encoder = support::order_encoder(&settings);
    // Order `o{offset}` at each offset of partition 0, PER_BATCH records per batch.
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &settings.kafka.brokers)
        .set("linger.ms", "500")
        .set("acks", "all")
        .create()
        .unwrap();
    for batch in 0..BATCHES {
        let sends = (batch * PER_BATCH..(batch + 1) * PER_BATCH).map(|offset| {
            let event = OrderEvent {
                event_id: Uuid::new_v4().to_string(),
                tenant_id: tenant.to_string(),
                order_id: format!("o{offset}"),
                ..domain::sample_order()
            };
            let value = encoder.encode(&event, false);
            let producer = &producer;
            let topic = &topic;
            async move {
                let record = FutureRecord::<[u8], [u8]>::to(topic)
                    .partition(0)
                    .payload(&value);
                producer.send(record, Duration::from_secs(30)).await
            }
        });
        for (i, delivery) in futures::future::join_all(sends)
            .await
            .into_iter()
            .enumerate()
        {
            let delivery = delivery.map_err(|(e, _)| e).unwrap();
            assert_eq!(delivery.offset, batch * PER_BATCH + i as i64, "in order");
        }
    }
    // The group's progress says offsets before STORED are done.
    sqlx::query(
        "INSERT INTO consumer_offsets (consumer_group, topic, partition, next_offset)
         VALUES ($1, $2, 0, $3)",
    )
    .bind(&settings.kafka.group_id)
    .bind(&topic)
    .bind(STORED)
    .execute(&admin)
    .await
    .unwrap();

    let worker = support::RunningWorker::start(&settings, Health::default()).await;
    let end = BATCHES * PER_BATCH;
    let ends = EndOffsets::from([(0, end)]);
    support::wait_for_offsets(&admin, &settings, &ends, Duration::from_secs(60)).await;
    worker.stop().await;

    let written: HashSet<String> =
        sqlx::query_scalar("SELECT order_id FROM orders WHERE tenant_id = $1")
            .bind(tenant)
            .fetch_all(&admin)
            .await
            .unwrap()
            .into_iter()
            .collect();
    let processed = (STORED..end)
        .filter(|offset| written.contains(&format!("o{offset}")))
        .count() as i64;
    assert!(
        (0..STORED).all(|offset| !written.contains(&format!("o{offset}"))),
        "nothing before the stored offset: {written:?}"
    );
    let rendered = metrics.render();
    let want = [("topic", topic.as_str())];
    let skipped = support::sample(&rendered, OFFSETS_SKIPPED, &want).unwrap_or(0.0) as i64;
    let gaps = support::sample(&rendered, OFFSET_GAPS, &want).unwrap_or(0.0) as i64;
    assert_eq!(
        processed + skipped,
        end - STORED,
        "every offset from {STORED} to {end} is processed ({processed}) or counted as skipped ({skipped})"
    );
    assert_eq!(gaps > 0, skipped > 0, "gaps {gaps}, skipped {skipped}");
    eprintln!("tansu: processed {processed}, skipped {skipped} in {gaps} gap(s)");
}
