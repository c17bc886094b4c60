//! `tenantstream demo`: the flags.

use clap::Args;

use crate::tools::demo::DemoOptions;

/// Flags of `tenantstream demo`.
#[derive(Args, Debug, Clone)]
pub struct DemoArgs {
    /// Messages to produce.
    #[arg(long, default_value_t = 20_000)]
    pub count: usize,
    /// Tenants in the traffic.
    #[arg(long, default_value_t = 20)]
    pub tenants: usize,
    /// Partitions of the orders topic.
    #[arg(long, default_value_t = 4)]
    pub partitions: i32,
    /// Share of malformed messages.
    #[arg(long, default_value_t = 0.01)]
    pub malformed: f64,
}

impl From<&DemoArgs> for DemoOptions {
    fn from(args: &DemoArgs) -> Self {
        Self {
            count: args.count,
            tenants: args.tenants,
            partitions: args.partitions,
            malformed: args.malformed,
        }
    }
}
