//! The settings' validation and their round trip through TOML.

use super::*;

#[test]
fn bad_field_is_named() {
    let mut s = Settings::default();
    s.kafka.batch_max_events = 0;
    let err = s.validate().unwrap_err().to_string();
    assert!(err.contains("kafka.batch_max_events"), "{err}");
}

#[test]
fn http_listen_takes_a_host_name_or_an_address_with_a_port() {
    let with = |listen: &str| {
        let mut s = Settings::default();
        s.http.listen = listen.into();
        s.validate().map_err(|e| e.to_string())
    };
    assert!(with("localhost:9898").is_ok());
    assert!(with("127.0.0.1:0").is_ok());
    assert!(with("[::1]:9898").is_ok());
    for bad in ["localhost", "127.0.0.1", "localhost:port"] {
        let err = with(bad).unwrap_err();
        assert!(err.contains("http.listen"), "{bad}: {err}");
    }
}

#[test]
fn numbers_out_of_range_name_their_field_and_range() {
    let mut s = Settings::default();
    s.redis.order_ttl_seconds = u64::MAX;
    let err = s.validate().unwrap_err().to_string();
    assert!(err.contains("redis.order_ttl_seconds"), "{err}");
    assert!(err.contains("is not between 0 and 315360000"), "{err}");
    let mut s = Settings::default();
    s.limits.max_items = 0;
    let err = s.validate().unwrap_err().to_string();
    assert!(err.contains("limits.max_items"), "{err}");
    assert!(Settings::default().validate().is_ok());
}

#[test]
fn redacted_toml_reads_back_to_the_same_settings_without_passwords() {
    let mut s = Settings::default();
    s.database.url = Secret::new("postgres://worker:hunter2@db:5432/x");
    s.redis.url = Secret::new("redis://:hunter2@cache:6379");
    s.schemas.registry_url = Some("https://reader:hunter2@registry:8081".into());
    s.log_format = LogFormat::Json;
    let text = s.to_redacted_toml();
    assert!(!text.contains("hunter2"), "{text}");
    let back: Settings = toml::from_str(&text).unwrap();
    assert_eq!(back, s.redacted());
    assert_eq!(
        back.database.url.expose(),
        "postgres://worker:***@db:5432/x"
    );
    assert_eq!(back.log_format, LogFormat::Json);
}

#[test]
fn unknown_file_key_is_an_error() {
    let err = toml::from_str::<Settings>("[kafka]\nbrokerz = \"x\"\n").unwrap_err();
    assert!(err.to_string().contains("brokerz"));
}

#[test]
fn rebalance_protocol_is_eager_or_cooperative_and_a_bad_one_is_named_with_both() {
    assert_eq!(
        Settings::default().kafka.rebalance_protocol,
        RebalanceProtocol::Eager
    );
    let s: Settings = toml::from_str("[kafka]\nrebalance_protocol = \"cooperative\"\n").unwrap();
    assert_eq!(s.kafka.rebalance_protocol, RebalanceProtocol::Cooperative);
    assert_eq!(
        s.kafka.rebalance_protocol.assignment_strategy(),
        Some("cooperative-sticky")
    );
    let err = toml::from_str::<Settings>("[kafka]\nrebalance_protocol = \"sticky\"\n")
        .unwrap_err()
        .to_string();
    for word in ["sticky", "eager", "cooperative"] {
        assert!(err.contains(word), "{word}: {err}");
    }
    for name in RebalanceProtocol::NAMES {
        let protocol: RebalanceProtocol = name.parse().unwrap();
        assert_eq!(protocol.to_string(), name);
    }
    assert!("Cooperative".parse::<RebalanceProtocol>().is_err());
}
