//! `tenantstream status`: the consumer group's progress per partition, printed as a table.

use crate::config::Settings;
use crate::tools::status;

/// `tenantstream status`.
pub async fn command(settings: &Settings) -> anyhow::Result<()> {
    println!("{}", status::status(settings).await?);
    Ok(())
}
