//! Outbox rows whose Redis write succeeded and that still have to be deleted: handed to the
//! next batch of the same tenant (whose statements delete them) or to the drainer's sweep.

use std::collections::HashMap;
use std::sync::Mutex;

use uuid::Uuid;

use crate::domain::{Keyspace, QueuedCache};

#[derive(Default)]
pub struct CacheLedger {
    applied: Mutex<HashMap<Keyspace, Vec<i64>>>,
}

impl CacheLedger {
    /// Notes outbox rows whose Redis write succeeded.
    pub fn record(&self, queued: &[QueuedCache]) {
        let mut applied = self.lock();
        for q in queued {
            applied
                .entry(q.item.keyspace())
                .or_default()
                .push(q.outbox_id);
        }
    }

    /// The applied rows of `tenants`, handed to the next batch to delete.
    pub fn take_for(&self, tenants: impl IntoIterator<Item = Uuid>) -> HashMap<Uuid, Vec<i64>> {
        let mut applied = self.lock();
        tenants
            .into_iter()
            .filter_map(|t| applied.remove(&Keyspace::Tenant(t)).map(|ids| (t, ids)))
            .collect()
    }

    /// Every applied row, for the drainer's sweep.
    pub fn take_all(&self) -> HashMap<Keyspace, Vec<i64>> {
        std::mem::take(&mut *self.lock())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Keyspace, Vec<i64>>> {
        self.applied.lock().expect("ledger lock")
    }
}
