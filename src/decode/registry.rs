//! A Confluent Schema Registry client: `GET /schemas/ids/{id}`. A missing id is permanent
//! (`unknown_schema`); an unreachable or failing registry is transient.

use std::time::Duration;

use super::schema_store::WriterSchema;
use super::DecodeError;

pub(super) struct Registry {
    base_url: String,
    http: reqwest::Client,
}

impl Registry {
    pub(super) fn new(url: &str) -> Self {
        Self {
            base_url: url.trim_end_matches('/').to_owned(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .expect("HTTP client without TLS always builds"),
        }
    }

    pub(super) async fn fetch(&self, id: u32) -> Result<WriterSchema, DecodeError> {
        #[derive(serde::Deserialize)]
        struct Response {
            schema: String,
        }
        let url = format!("{}/schemas/ids/{id}", self.base_url);
        let unavailable = |e: String| DecodeError::RegistryUnavailable(format!("{url}: {e}"));
        let response = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        let status = response.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Err(DecodeError::UnknownSchema(format!(
                "schema id {id} not found in the registry"
            )));
        }
        if !status.is_success() {
            return Err(unavailable(format!("HTTP {status}")));
        }
        let body: Response = response
            .json()
            .await
            .map_err(|e| unavailable(format!("unreadable answer: {e}")))?;
        WriterSchema::parse(format!("id {id}"), &body.schema)
            .map_err(|e| DecodeError::UnknownSchema(format!("schema id {id} is not Avro: {e}")))
    }
}
