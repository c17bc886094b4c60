//! Decode + validate micro-benchmark for the order schema, on one core: Confluent-framed
//! values from the traffic generator (the demo's and the pipeline benchmark's workload), each
//! unframed, decoded with its writer schema and validated into a `ValidOrder`.
//!
//! Run: `cargo bench --bench decode`. The target is at least 1,000,000 records/s.

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tenantstream::testing::decode::{Decoder, Encoder, SchemaStore};
use tenantstream::testing::domain::{Event, OrderEvent, ValidOrder};
use tenantstream::testing::traffic::{self, TrafficSpec, WireFormat};
use tenantstream::Settings;

const RECORDS: usize = 10_000;

/// The binary's allocator (see `src/main.rs`): decoding allocates and frees every field.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn decode_and_validate(c: &mut Criterion) {
    let settings = Settings::default();
    let encoder = Encoder::for_event::<ValidOrder>(&settings.schemas).expect("order encoder");
    let spec = TrafficSpec {
        count: RECORDS,
        tenants: 500,
        malformed: 0.0,
        format: WireFormat::Confluent,
        seed: 42,
        ..Default::default()
    };
    let (messages, _) = traffic::generate(&spec, &encoder);
    let store = Arc::new(SchemaStore::load(&settings.schemas.dir, None).expect("schemas"));
    let decoder =
        Decoder::new(store, ValidOrder::SCHEMA_FILE, &settings.limits).expect("order decoder");

    let mut group = c.benchmark_group("order");
    group.throughput(Throughput::Elements(messages.len() as u64));
    group.bench_function("decode+validate", |b| {
        b.iter(|| {
            for message in &messages {
                // No registry round trip: the writer schema is local, so the future is ready.
                let event: OrderEvent =
                    futures::executor::block_on(decoder.decode(&message.value)).expect("decodes");
                std::hint::black_box(event.validate().expect("valid"));
            }
        })
    });
    group.finish();
}

criterion_group!(benches, decode_and_validate);
criterion_main!(benches);
