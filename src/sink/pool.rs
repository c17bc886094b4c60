//! Connections: the worker's pool (a role subject to RLS, checked) and the owner's migrations.

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgPool, Postgres};

use super::SinkError;
use crate::config::DatabaseSettings;

fn connect_options(url: &str) -> Result<PgConnectOptions, SinkError> {
    let options: PgConnectOptions = url
        .parse()
        .map_err(|e| SinkError::Setup(format!("invalid Postgres URL: {e}")))?;
    Ok(options
        .application_name("tenantstream")
        .log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_secs(2)))
}

/// The worker's pool (lazy: connects on first use). A statement or lock wait that hangs (a
/// network partition, a stuck lock) fails after a bound and is retried, instead of holding the
/// batch, and shutdown, forever.
pub async fn connect_worker(settings: &DatabaseSettings) -> Result<PgPool, SinkError> {
    connect_worker_sized(settings, settings.max_connections)
}

/// [`connect_worker`] with its own size, for a separate small pool.
pub fn connect_worker_sized(
    settings: &DatabaseSettings,
    max_connections: u32,
) -> Result<PgPool, SinkError> {
    // A lock wait ends first (a transient failure), so a statement timeout is the statement's
    // own work, which the batch isolates like a row rejection (one statement writes at most
    // a bounded number of tenants' orders: see `orders::TENANTS_PER_CALL`).
    let statement = settings.statement_timeout_ms;
    let options = connect_options(settings.url.expose())?.options([
        ("statement_timeout", format!("{statement}ms")),
        ("lock_timeout", format!("{}ms", statement / 3)),
    ]);
    Ok(PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy_with(options))
}

/// Fails unless the pool's role is subject to RLS (not superuser, no BYPASSRLS, owns no table).
pub async fn ensure_rls_applies(pool: &PgPool) -> Result<(), SinkError> {
    let (role, bypasses, owned): (String, bool, i64) = sqlx::query_as(
        "SELECT r.rolname::text, r.rolsuper OR r.rolbypassrls,
                (SELECT count(*) FROM pg_class c WHERE c.relowner = r.oid AND c.relkind = 'r')
           FROM pg_roles r WHERE r.rolname = current_user",
    )
    .fetch_one(pool)
    .await?;
    if bypasses || owned > 0 {
        return Err(SinkError::Setup(format!(
            "the worker connects as {role:?}, which {} row-level security; set DATABASE_URL to the \
             tenantstream_worker role (see README)",
            if bypasses { "bypasses" } else { "owns tables and so could alter" }
        )));
    }
    Ok(())
}

/// A small pool as the owner (who bypasses RLS), for migrations and for checking end states.
pub async fn connect_owner(url: &str) -> Result<PgPool, SinkError> {
    Ok(PgPoolOptions::new()
        .max_connections(2)
        .connect_with(connect_options(url)?)
        .await?)
}

/// Connects once to `url` within 5 s: a quick, clear answer to "is the server there?".
pub async fn check_reachable(url: &str) -> Result<(), SinkError> {
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(connect_options(url)?)
        .await?;
    pool.close().await;
    Ok(())
}

/// What [`migrate`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Migrated {
    /// The database did not exist and was created.
    pub created_database: bool,
    /// Migrations applied by this run.
    pub applied: usize,
    /// Migrations the binary knows (all applied once it returns).
    pub total: usize,
}

/// Runs the migrations as the owner, creating the database first if it does not exist.
pub async fn migrate(admin_url: &str) -> Result<Migrated, SinkError> {
    use sqlx::migrate::MigrateDatabase;
    let mut created_database = false;
    if !Postgres::database_exists(admin_url).await? {
        match Postgres::create_database(admin_url).await {
            Ok(()) => created_database = true,
            // Another process created it between the check and the create.
            Err(sqlx::Error::Database(e))
                if matches!(e.code().as_deref(), Some("42P04" | "23505")) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let pool = connect_owner(admin_url).await?;
    let migrator = sqlx::migrate!("./migrations");
    let before = applied_migrations(&pool).await?;
    migrator
        .run(&pool)
        .await
        .map_err(|e| SinkError::Setup(format!("migration failed: {e}")))?;
    let after = applied_migrations(&pool).await?;
    pool.close().await;
    Ok(Migrated {
        created_database,
        applied: after.saturating_sub(before),
        total: migrator.iter().count(),
    })
}

/// Migrations recorded as applied (none before the first run creates sqlx's table).
async fn applied_migrations(pool: &PgPool) -> Result<usize, SinkError> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
        .fetch_one(pool)
        .await?;
    if !exists {
        return Ok(0);
    }
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(pool)
        .await?;
    Ok(count as usize)
}
