//! A batch's messages after decoding: the events that validated (and whose key agrees with
//! the body, under `tenants.key_must_match`), each beside its message, and the dead letters of
//! the rest. Events leave it (as dead letters) when their tenant is unknown
//! under strict tenants, or when Postgres rejects their row.

use std::collections::HashSet;

use rdkafka::message::OwnedMessage;
use rdkafka::Message;
use uuid::Uuid;

use super::dead_letter::{DeadLetter, REJECTED_BY_POSTGRES, UNKNOWN_TENANT};
use crate::decode::{decode_message, DecodeError, Decoder};
use crate::domain::{unregistered_tenants, Event, TenantPolicy};
use crate::metrics::Stage;
use crate::retry::Classify;
use crate::sink::RejectedRow;
use crate::validate::{KeyPolicy, Validate};

/// Bytes of values decoded between two yields to the worker's main loop.
const DECODE_BUDGET_BYTES: usize = 256 * 1024;

pub(super) struct Decoded<'m, E> {
    /// The message of each event, index by index.
    messages: Vec<&'m OwnedMessage>,
    events: Vec<E>,
    /// Dead letters of the messages that are not usable events.
    dead: Vec<DeadLetter>,
    /// The tenant and code of each dead letter taken to be sent whose message names a tenant.
    taken: Vec<(Uuid, &'static str)>,
}

impl<'m, E: Validate> Decoded<'m, E> {
    /// Decodes and validates each message and checks its key by `keys`; permanent failures
    /// become dead letters. Fails only when a failure is transient (the schema registry is
    /// unreachable).
    ///
    /// Decoding runs on the task that also receives messages and handles rebalances, so it
    /// yields to it after every [`DECODE_BUDGET_BYTES`] of values: one message's decoding,
    /// bounded by `limits.max_message_bytes` (and time linear in bytes, see
    /// [`crate::decode`]), is the longest that task waits.
    pub async fn decode(
        decoder: &Decoder,
        keys: KeyPolicy,
        batch: &'m [OwnedMessage],
    ) -> Result<Self, DecodeError> {
        let mut decoded = Self {
            messages: Vec::with_capacity(batch.len()),
            events: Vec::with_capacity(batch.len()),
            dead: Vec::new(),
            taken: Vec::new(),
        };
        let mut since_yield = 0;
        for message in batch {
            since_yield += message.payload().map_or(0, <[u8]>::len);
            if since_yield >= DECODE_BUDGET_BYTES {
                since_yield = 0;
                tokio::task::yield_now().await;
            }
            let event = decode_message::<E>(decoder, message.payload(), message.key(), keys);
            match event.await {
                Ok(event) => {
                    decoded.messages.push(message);
                    decoded.events.push(event);
                }
                Err((error, _)) if error.is_transient() => return Err(error),
                Err((error, tenant)) => decoded.dead.push(DeadLetter {
                    tenant,
                    ..dead_letter(message, error.code(), error.stage(), error.to_string())
                }),
            }
        }
        Ok(decoded)
    }
}

impl<'m, E: Event> Decoded<'m, E> {
    /// The usable events, in offset order.
    pub fn events(&self) -> &[E] {
        &self.events
    }

    /// The tenants of the events.
    pub fn tenants(&self) -> impl Iterator<Item = Uuid> + '_ {
        self.events.iter().filter_map(|e| e.tenant())
    }

    /// The dead letters so far, to be sent.
    pub fn take_dead(&mut self) -> Vec<DeadLetter> {
        let letters = std::mem::take(&mut self.dead);
        let named = letters.iter().filter_map(|l| l.tenant.map(|t| (t, l.code)));
        self.taken.extend(named);
        letters
    }

    /// The tenant and error code of every dead letter taken whose message names a tenant: what
    /// the batch dead-lettered per tenant, once it has committed.
    pub fn dead_letters_by_tenant(&self) -> &[(Uuid, &'static str)] {
        &self.taken
    }

    /// Tenants that must already be registered under strict tenants.
    pub fn unregistered_tenants(&self) -> Vec<Uuid> {
        unregistered_tenants(&self.events)
    }

    /// Strict tenants: events of tenants neither in `known` nor registered by the batch become
    /// `unknown_tenant` dead letters.
    pub fn reject_unknown_tenants(&mut self, known: &HashSet<Uuid>) {
        let required: HashSet<Uuid> = self.unregistered_tenants().into_iter().collect();
        let unknown: Vec<usize> = (0..self.events.len())
            .filter(|i| {
                self.events[*i]
                    .tenant()
                    .is_some_and(|t| required.contains(&t) && !known.contains(&t))
            })
            .collect();
        for (message, event) in self.remove(&unknown) {
            let tenant = event.tenant().expect("filtered on its tenant");
            let reason = format!("tenant {tenant} is not registered");
            self.dead.push(DeadLetter {
                tenant: Some(tenant),
                ..dead_letter(message, UNKNOWN_TENANT, Stage::Sink, reason)
            });
        }
    }

    /// Moves the events whose rows Postgres rejected (`rejected` in index order) to the dead
    /// letters, as `rejected_by_postgres`. Under strict tenants the other events of a tenant
    /// whose registering event (its profile) was rejected stay: with the profile gone they are
    /// `unknown_tenant`, which [`Decoded::reject_unknown_tenants`] decides next.
    pub fn reject_rows(&mut self, mut rejected: Vec<RejectedRow>, policy: TenantPolicy) {
        debug_assert!(rejected.windows(2).all(|w| w[0].index < w[1].index));
        if policy == TenantPolicy::RequireKnown {
            let unregistered: HashSet<Uuid> = rejected
                .iter()
                .map(|r| &self.events[r.index])
                .filter(|e| e.registers_tenant())
                .filter_map(|e| e.tenant())
                .collect();
            rejected.retain(|r| {
                let event = &self.events[r.index];
                event.registers_tenant()
                    || event.tenant().is_none_or(|t| !unregistered.contains(&t))
            });
        }
        let indices: Vec<usize> = rejected.iter().map(|r| r.index).collect();
        for ((message, event), row) in self.remove(&indices).into_iter().zip(rejected) {
            let reason = format!(
                "Postgres rejected the row (SQLSTATE {}): {}",
                row.sqlstate, row.message
            );
            self.dead.push(DeadLetter {
                sqlstate: Some(row.sqlstate),
                tenant: event.tenant(),
                ..dead_letter(message, REJECTED_BY_POSTGRES, Stage::Sink, reason)
            });
        }
    }

    /// Removes the events at `indices` (ascending), returning them with their messages.
    fn remove(&mut self, indices: &[usize]) -> Vec<(&'m OwnedMessage, E)> {
        let mut removed = Vec::with_capacity(indices.len());
        for index in indices.iter().rev() {
            removed.push((self.messages.remove(*index), self.events.remove(*index)));
        }
        removed.reverse();
        removed
    }
}

/// A message of the batch that is not an event this worker can use.
fn dead_letter(
    message: &OwnedMessage,
    code: &'static str,
    stage: Stage,
    reason: String,
) -> DeadLetter {
    DeadLetter {
        message: message.clone(),
        code,
        stage,
        reason,
        sqlstate: None,
        tenant: None,
    }
}
