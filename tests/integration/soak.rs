//! Reliability soak: three worker processes in one consumer group drain orders and
//! configuration changes produced at a steady rate while workers are SIGKILLed and restarted,
//! one worker leaves and comes back, and Postgres, Redis and the broker are restarted. At the
//! end the state equals the traffic's oracle: rows, cache keys, stored offsets, dead letters,
//! and SLA violations stored, published and counted once each.
//!
//! Broker: librdkafka's mock cluster, hosted in this test process (the workers connect to it
//! over loopback). Its group coordinator expires a SIGKILLed member after its session timeout,
//! as Kafka's does; tansu 0.6.0's can leave a survivor with no partitions for good, and it
//! skips records after a seek inside a multi-record batch (see README "Reliability").
//! Postgres and Redis are servers of the soak's own, so restarting them touches no other test.
//!
//! The suite runs a short soak under each rebalance protocol; `scripts/soak.sh` runs the long
//! one (`SOAK_EVENTS`, `SOAK_TENANTS`, `SOAK_SECONDS`, `SOAK_KILLS`, `SOAK_PARTITIONS`).

mod faults;
mod oracle;

use std::time::{Duration, Instant};

use tenantstream::testing::traffic::{self, TrafficSpec, WireFormat};
use tenantstream::{RebalanceProtocol, Secret, Settings};

use crate::support::{self, PrivatePostgres, PrivateRedis};
use faults::{Fault, Fleet};

/// The soak's size: the suite's short run unless `SOAK_*` variables say otherwise.
#[derive(Debug, Clone, Copy)]
struct Knobs {
    /// Order messages (malformed ones included).
    events: usize,
    tenants: usize,
    /// How long production lasts; the faults are spread over it.
    seconds: u64,
    kills: usize,
    partitions: i32,
    /// Seeds the traffic and the faults' times (`SOAK_SEED`; random unless set, and printed).
    seed: u64,
}

impl Knobs {
    fn from_env() -> Self {
        let knob = |name: &str, default: u64| -> u64 {
            std::env::var(name)
                .ok()
                .map(|v| {
                    v.parse()
                        .unwrap_or_else(|_| panic!("{name}={v}: not a number"))
                })
                .unwrap_or(default)
        };
        Self {
            events: knob("SOAK_EVENTS", 10_000) as usize,
            tenants: knob("SOAK_TENANTS", 50) as usize,
            seconds: knob("SOAK_SECONDS", 30),
            kills: knob("SOAK_KILLS", 10) as usize,
            partitions: knob("SOAK_PARTITIONS", 6) as i32,
            seed: knob("SOAK_SEED", rand::random()),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn soak_with_faults_under_the_eager_protocol() {
    soak(RebalanceProtocol::Eager).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn soak_with_faults_under_the_cooperative_protocol() {
    soak(RebalanceProtocol::Cooperative).await;
}

async fn soak(protocol: RebalanceProtocol) {
    let knobs = Knobs::from_env();
    let started = Instant::now();
    let postgres = tokio::task::block_in_place(PrivatePostgres::start);
    let database = "tenantstream_soak";
    let server = sqlx::PgPool::connect(&postgres.url("postgres", "postgres"))
        .await
        .expect("connect to the soak's Postgres");
    sqlx::query(&format!("CREATE DATABASE {database}"))
        .execute(&server)
        .await
        .unwrap();
    server.close().await;
    let admin_url = postgres.url("postgres", database);
    tenantstream::testing::sink::migrate(&admin_url)
        .await
        .expect("migrate the soak's database");
    let admin = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect(&admin_url)
        .await
        .unwrap();
    let mut redis_server = tokio::task::block_in_place(PrivateRedis::single_persistent);

    let mock = rdkafka::mocking::MockCluster::new(1).expect("mock cluster");
    let mut settings = support::settings(&mock.bootstrap_servers(), "soak");
    create_topics(&mock, &settings, knobs.partitions);
    settings.database.url = Secret::new(postgres.url("tenantstream_worker", database));
    settings.database.admin_url = Secret::new(&admin_url);
    settings.redis.url = Secret::new(&redis_server.url);
    settings.kafka.rebalance_protocol = protocol;
    settings.sla.poll_interval_ms = 250;

    // The traffic and its oracle, generated before the clock starts.
    let spec = TrafficSpec {
        count: knobs.events,
        tenants: knobs.tenants,
        malformed: 0.01,
        duplicates: 0.05,
        reorder: 0.05,
        format: WireFormat::Mixed,
        seed: knobs.seed,
        ..Default::default()
    };
    let (mut orders, mut expected) = traffic::generate(&spec, &support::order_encoder(&settings));
    let (configs, expected_config) = support::config_traffic(&settings, &expected.tenants, 0.0);
    let sla = oracle::stuck_orders(
        &settings,
        knobs.tenants / 10 + 1,
        &mut orders,
        &mut expected,
    );

    eprintln!(
        "soak ({protocol}): {knobs:?} (SOAK_SEED={} repeats these orders and these faults' times)",
        knobs.seed
    );
    let mut fleet = Fleet::new(&settings);
    for slot in 0..3 {
        fleet.start(slot);
    }
    let policies_sent = fleet.check_alive(sla.set_policies(&settings, &admin)).await;
    let production = Duration::from_secs(knobs.seconds);
    let orders_sent = oracle::produce(
        &settings,
        &settings.kafka.orders_topic,
        orders.clone(),
        production,
    );
    let configs_sent =
        oracle::produce(&settings, &settings.kafka.config_topic, configs, production);

    let plan = faults::plan(production, knobs.kills, knobs.seed);
    let clock = Instant::now();
    for (at, fault) in &plan {
        tokio::time::sleep_until((clock + *at).into()).await;
        // Progress of a long soak (shown with --nocapture, as scripts/soak.sh runs it).
        eprintln!(
            "soak ({protocol}) at {:.1} s: {fault:?}",
            clock.elapsed().as_secs_f64()
        );
        match fault {
            Fault::Postgres => {
                tokio::task::block_in_place(|| postgres.crash_and_restart(Duration::from_secs(2)))
            }
            Fault::Redis => {
                tokio::task::block_in_place(|| redis_server.restart(Duration::from_secs(2)))
            }
            Fault::Broker => {
                mock.broker_down(1).unwrap();
                tokio::time::sleep(Duration::from_secs(3)).await;
                mock.broker_up(1).unwrap();
            }
            // Waiting for a process blocks: the producers' tasks must not wait behind it.
            other => tokio::task::block_in_place(|| fleet.apply(*other)),
        }
    }
    eprintln!(
        "soak ({protocol}) at {:.1} s: faults done",
        clock.elapsed().as_secs_f64()
    );
    let orders_sent = orders_sent.await.unwrap();
    let configs_sent = configs_sent.await.unwrap();
    let produced_in = clock.elapsed();
    eprintln!(
        "soak ({protocol}) at {:.1} s: traffic sent",
        produced_in.as_secs_f64()
    );
    fleet.ensure_running();

    // Drained: every offset stored, every queued cache write and violation delivered.
    let drain = Duration::from_secs(knobs.seconds * 3 + 240);
    let brokers = &settings.kafka.brokers;
    let ends = written(support::end_offsets(
        brokers,
        &settings.kafka.orders_topic,
        knobs.partitions,
    ));
    assert_eq!(
        ends, orders_sent.ends,
        "the orders topic holds the traffic and nothing else"
    );
    let config_ends = written(support::end_offsets(
        brokers,
        &settings.kafka.config_topic,
        config_partitions(knobs.partitions),
    ));
    let mut sent_ends = configs_sent.ends.clone();
    support::merge_ends(&mut sent_ends, &policies_sent);
    assert_eq!(
        config_ends, sent_ends,
        "the configuration topic holds the policies and the traffic"
    );
    fleet
        .check_alive(support::wait_for_offsets(&admin, &settings, &ends, drain))
        .await;
    let config_topic = settings.kafka.config_topic.clone();
    fleet
        .check_alive(support::wait_for_topic_offsets(
            &admin,
            &settings,
            &config_topic,
            &config_ends,
            drain,
        ))
        .await;
    let mut all_tenants = expected.tenants.clone();
    all_tenants.sort();
    fleet
        .check_alive(support::wait_for_cache(
            &admin,
            &all_tenants,
            Duration::from_secs(60),
        ))
        .await;
    let violations = fleet
        .check_alive(oracle::wait_for_violations(&admin, &sla, &all_tenants))
        .await;
    let drained_in = clock.elapsed();
    fleet.stop_all();

    let redis = tenantstream::testing::cache::connect(&redis_server.url)
        .await
        .unwrap();
    support::assert_rows(&admin, &expected).await;
    support::assert_cache(&redis, &expected).await;
    support::assert_config_rows(&admin, &expected_config).await;
    support::assert_config_cache(&redis, &expected_config).await;
    let dead = support::assert_dead_letters(&settings, &orders, &orders_sent);
    let counted =
        oracle::assert_violations(&admin, &redis, &settings, &sla, &violations, &all_tenants).await;

    eprintln!(
        "soak ({protocol}): {} order messages ({} malformed) and {} configuration changes over {} \
         tenants and {} partitions, produced in {:.0} s, drained {:.0} s after the first message \
         ({:.0} s in all); faults: {} SIGKILLs, 1 leave and 1 join, Postgres crash-restart, Redis \
         restart, broker down 3 s; end state: {} orders and {} configuration entries as the oracle \
         says, {} cache keys, stored offsets at the end offsets, {} dead letters ({} \
         messages, copies identical), {} SLA violations stored, published and counted once: lost 0, duplicated \
         effects 0",
        orders.len(),
        dead.distinct,
        configs_sent.positions.len(),
        all_tenants.len(),
        knobs.partitions,
        produced_in.as_secs_f64(),
        drained_in.as_secs_f64(),
        started.elapsed().as_secs_f64(),
        fleet.kills,
        expected.orders.len(),
        expected_config.entries.len() + expected_config.profiles.len() + expected_config.categories.len(),
        expected.orders.len(),
        dead.distinct,
        dead.copies,
        counted,
    );
}

fn config_partitions(order_partitions: i32) -> i32 {
    (order_partitions / 3).max(2)
}

fn create_topics(
    mock: &rdkafka::mocking::MockCluster<'_, rdkafka::producer::DefaultProducerContext>,
    settings: &Settings,
    partitions: i32,
) {
    let k = &settings.kafka;
    mock.create_topic(&k.orders_topic, partitions, 1).unwrap();
    mock.create_topic(&k.config_topic, config_partitions(partitions), 1)
        .unwrap();
    mock.create_topic(&k.dead_letter_topic, 1, 1).unwrap();
    mock.create_topic(&k.sla_violations_topic, 1, 1).unwrap();
}

/// The partitions of `ends` that hold anything (a partition without messages has no stored
/// offset to compare).
fn written(ends: traffic::EndOffsets) -> traffic::EndOffsets {
    ends.into_iter().filter(|(_, end)| *end > 0).collect()
}
