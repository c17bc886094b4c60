//! Connections: the worker's pool (a role subject to RLS, checked) and the owner's migrations.

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgPool, Postgres};

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

/// The worker's pool, checked before any work: the server answers at the URL's address, the
/// database and the role exist, the database is migrated, and the role is subject to RLS.
/// What only an operator can fix (a missing database or role, an unmigrated database) is a
/// [`SinkError::Setup`] naming the fix; a server that does not answer is
/// [`SinkError::Unreachable`], naming its address, and worth waiting for.
pub async fn connect_worker_checked(settings: &DatabaseSettings) -> Result<PgPool, SinkError> {
    let options = connect_options(settings.url.expose())?;
    let at = format!("{}:{}", options.get_host(), options.get_port());
    let unreachable = |reason: String| SinkError::Unreachable {
        at: at.clone(),
        reason,
    };
    let connecting = tokio::time::timeout(CONNECT_TIMEOUT, options.connect());
    let mut connection = match connecting.await {
        Err(_) => {
            let waited = CONNECT_TIMEOUT.as_secs();
            return Err(unreachable(format!("no answer within {waited} s")));
        }
        Ok(Err(sqlx::Error::Io(e))) => return Err(unreachable(e.to_string())),
        Ok(Err(sqlx::Error::Database(e))) => {
            let database = options.get_database().unwrap_or("(default)");
            let role = options.get_username();
            return Err(match e.code().as_deref() {
                Some(INVALID_CATALOG_NAME) => SinkError::Setup(format!(
                    "database {database:?} does not exist at {at}: run `tenantstream migrate` \
                     (it creates the database and the worker role), or correct DATABASE_URL"
                )),
                Some(INVALID_AUTHORIZATION | INVALID_PASSWORD) => SinkError::Setup(format!(
                    "Postgres at {at} refuses role {role:?}: {}. Run `tenantstream migrate` \
                     (it creates the tenantstream_worker role), create the role, or correct \
                     DATABASE_URL",
                    e.message()
                )),
                _ => SinkError::Database(sqlx::Error::Database(e)),
            });
        }
        Ok(Err(other)) => return Err(other.into()),
        Ok(Ok(connection)) => connection,
    };
    let migrated: bool = sqlx::query_scalar("SELECT to_regclass('consumer_offsets') IS NOT NULL")
        .fetch_one(&mut connection)
        .await?;
    let _ = connection.close().await;
    if !migrated {
        return Err(SinkError::Setup(format!(
            "the database {} is not migrated (it has no consumer_offsets table): run \
             `tenantstream migrate`",
            settings.url
        )));
    }
    let pool = connect_worker(settings).await?;
    ensure_rls_applies(&pool).await?;
    Ok(pool)
}

/// How long a first connection may take to answer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// SQLSTATE 3D000: the database does not exist.
const INVALID_CATALOG_NAME: &str = "3D000";
/// SQLSTATE 28000: no such role, or pg_hba.conf refuses it.
const INVALID_AUTHORIZATION: &str = "28000";
/// SQLSTATE 28P01: wrong password.
const INVALID_PASSWORD: &str = "28P01";

/// Fails unless the pool's role is subject to RLS: it owns no table, and neither it nor any
/// role it can reach through membership (directly or through other roles, whether it inherits
/// their rights or must `SET ROLE` first) is a superuser, has BYPASSRLS or owns a table with
/// row-level security. The error names the role reached and how.
pub async fn ensure_rls_applies(pool: &PgPool) -> Result<(), SinkError> {
    let (role, owned): (String, i64) = sqlx::query_as(
        "SELECT current_user::text,
                (SELECT count(*) FROM pg_class c
                  WHERE c.relowner = (SELECT oid FROM pg_roles WHERE rolname = current_user)
                    AND c.relkind IN ('r', 'p'))",
    )
    .fetch_one(pool)
    .await?;
    let reached: Vec<(String, bool, bool, Option<String>)> = sqlx::query_as(
        "SELECT r.rolname::text, r.rolsuper, r.rolbypassrls,
                (SELECT min(c.relname)::text FROM pg_class c
                  WHERE c.relowner = r.oid AND c.relrowsecurity)
           FROM pg_roles r
          WHERE pg_has_role(current_user, r.oid, 'MEMBER')
            AND (r.rolsuper OR r.rolbypassrls OR EXISTS (
                    SELECT 1 FROM pg_class c WHERE c.relowner = r.oid AND c.relrowsecurity))
          ORDER BY r.rolname",
    )
    .fetch_all(pool)
    .await?;
    let fix = "set DATABASE_URL to the tenantstream_worker role (see README)";
    if let Some((reached, superuser, bypass, table)) = reached.first() {
        let power = if *superuser {
            "is a superuser".to_owned()
        } else if *bypass {
            "has BYPASSRLS".to_owned()
        } else {
            format!("owns the RLS table {}", table.as_deref().unwrap_or("?"))
        };
        let how = if *reached == role {
            format!("the worker connects as {role:?}, which {power}")
        } else {
            format!("the worker connects as {role:?}, a member of {reached:?}, which {power}")
        };
        return Err(SinkError::Setup(format!(
            "{how}: it bypasses row-level security; {fix}"
        )));
    }
    if owned > 0 {
        return Err(SinkError::Setup(format!(
            "the worker connects as {role:?}, which owns tables and so could alter row-level \
             security; {fix}"
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
