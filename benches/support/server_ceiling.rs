//! The server-side ceiling that issue 10 compares the worker with: the same rows written by
//! Postgres alone, as the RLS-bound role, tenant by tenant, with one `set_config` and one
//! set-based upsert with the version guard per tenant and no client round trip per tenant. It
//! keeps nothing else: no outbox, no deadlines, no offsets, and no batches, so each tenant's
//! rows of the whole workload go in one statement. Each order is written once, from its newest
//! event (a statement may touch a row only once); the rate is counted in the workload's events.

use std::time::Instant;

use anyhow::Context;
use sqlx::{Connection, PgConnection, PgPool};
use tenantstream::testing::domain::ValidOrder;
use tenantstream::testing::sink::latest_per_order;
use tenantstream::Settings;
use uuid::Uuid;

/// A session's own function (`pg_temp`): the worker role may create temporary objects only.
const UPSERT_FUNCTION: &str = r#"
CREATE FUNCTION pg_temp.server_side_upsert(
    tenant_ids uuid[], firsts int[], lasts int[], order_ids text[], versions int8[],
    statuses text[], customer_ids text[], currencies text[], totals int8[], item_lists text[],
    occurred_ms int8[], event_ids uuid[]) RETURNS void
    LANGUAGE plpgsql
AS $$
DECLARE
    t int;
    f int;
    l int;
    context text;
BEGIN
    FOR t IN 1 .. coalesce(array_length(tenant_ids, 1), 0) LOOP
        f := firsts[t];
        l := lasts[t];
        context := set_config('app.tenant_id', tenant_ids[t]::text, true);
        INSERT INTO orders AS o (tenant_id, order_id, version, status, customer_id, currency,
                                 total_cents, items, occurred_at, last_event_id, updated_at)
        SELECT tenant_ids[t], i.order_id, i.version, i.status, i.customer_id, i.currency,
               i.total_cents, i.items::jsonb, to_timestamp(i.occurred_ms / 1000.0),
               i.event_id, now()
          FROM UNNEST(order_ids[f:l], versions[f:l], statuses[f:l], customer_ids[f:l],
                      currencies[f:l], totals[f:l], item_lists[f:l], occurred_ms[f:l],
                      event_ids[f:l])
               AS i(order_id, version, status, customer_id, currency, total_cents, items,
                    occurred_ms, event_id)
        ON CONFLICT (tenant_id, order_id) DO UPDATE
           SET version = EXCLUDED.version, status = EXCLUDED.status,
               customer_id = EXCLUDED.customer_id, currency = EXCLUDED.currency,
               total_cents = EXCLUDED.total_cents, items = EXCLUDED.items,
               occurred_at = EXCLUDED.occurred_at, last_event_id = EXCLUDED.last_event_id,
               updated_at = now()
         WHERE o.version < EXCLUDED.version;
    END LOOP;
    context := set_config('app.tenant_id', '', true);
END
$$"#;

/// Tenants per call: a call's arrays are sliced once per tenant, so calls stay small.
const TENANTS_PER_CALL: usize = 100;

/// `orders` (fresh tenants, registered here first, untimed) written server-side over `lanes`
/// sessions side by side, each with its share of the tenants: the seconds it took and the rows
/// written.
pub async fn server_side_ceiling(
    settings: &Settings,
    admin: &PgPool,
    orders: &[ValidOrder],
    lanes: usize,
) -> anyhow::Result<(f64, usize)> {
    let by_tenant = latest_per_order(orders);
    let tenants: Vec<Uuid> = by_tenant.keys().copied().collect();
    sqlx::query(
        "INSERT INTO tenants (tenant_id) SELECT * FROM UNNEST($1::uuid[]) ON CONFLICT DO NOTHING",
    )
    .bind(&tenants)
    .execute(admin)
    .await
    .context("register the ceiling's tenants")?;
    let rows = by_tenant.values().map(Vec::len).sum();
    let mut shares: Vec<Vec<(Uuid, Vec<&ValidOrder>)>> = vec![Vec::new(); lanes];
    for (i, tenant) in by_tenant.into_iter().enumerate() {
        shares[i % lanes].push(tenant);
    }
    let mut sessions = Vec::new();
    for _ in 0..lanes {
        let mut session = PgConnection::connect(settings.database.url.expose()).await?;
        sqlx::query(UPSERT_FUNCTION).execute(&mut session).await?;
        sessions.push(session);
    }
    let started = Instant::now();
    let writers = sessions
        .iter_mut()
        .zip(&shares)
        .map(|(session, share)| async move {
            for tenants in share.chunks(TENANTS_PER_CALL) {
                upsert(session, tenants).await?;
            }
            anyhow::Ok(())
        });
    for written in futures::future::join_all(writers).await {
        written?;
    }
    Ok((started.elapsed().as_secs_f64(), rows))
}

/// One call: the tenants' rows as one array per column, with each tenant's 1-based range.
async fn upsert(
    session: &mut PgConnection,
    tenants: &[(Uuid, Vec<&ValidOrder>)],
) -> anyhow::Result<()> {
    let (mut ids, mut firsts, mut lasts) = (Vec::new(), Vec::new(), Vec::new());
    let mut orders: Vec<&ValidOrder> = Vec::new();
    for (tenant, rows) in tenants {
        ids.push(*tenant);
        firsts.push(orders.len() as i32 + 1);
        orders.extend(rows);
        lasts.push(orders.len() as i32);
    }
    let column = |f: fn(&ValidOrder) -> String| orders.iter().map(|o| f(o)).collect::<Vec<_>>();
    let items: Vec<String> = orders
        .iter()
        .map(|o| serde_json::to_string(&o.event.items))
        .collect::<Result<_, _>>()?;
    sqlx::query(
        "SELECT pg_temp.server_side_upsert($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
    )
    .bind(&ids)
    .bind(&firsts)
    .bind(&lasts)
    .bind(column(|o| o.event.order_id.clone()))
    .bind(orders.iter().map(|o| o.event.version).collect::<Vec<_>>())
    .bind(column(|o| o.event.event_type.status().to_string()))
    .bind(column(|o| o.event.customer_id.clone()))
    .bind(column(|o| o.event.currency.clone()))
    .bind(
        orders
            .iter()
            .map(|o| o.event.total_cents)
            .collect::<Vec<_>>(),
    )
    .bind(items)
    .bind(
        orders
            .iter()
            .map(|o| o.event.occurred_at)
            .collect::<Vec<_>>(),
    )
    .bind(orders.iter().map(|o| o.event_id).collect::<Vec<_>>())
    .execute(session)
    .await
    .context("server-side upsert")?;
    Ok(())
}
