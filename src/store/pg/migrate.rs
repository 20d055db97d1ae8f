//! Schema migrations of the PostgreSQL store.
//!
//! Owns the numbered migrations (`migrations/NNNN_*.sql`, embedded in the
//! binary) and applying the missing ones in order under an advisory lock, so
//! replicas starting together, or `hookrouter migrate` beside a running
//! server, apply each migration once. Applied versions are rows of
//! `hookrouter_schema`.

use tokio_postgres::Client;

use super::db_err;
use crate::store::StoreError;

/// Every migration, in order. Append only: an applied migration never changes.
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (1, "init", include_str!("migrations/0001_init.sql")),
    (2, "respond", include_str!("migrations/0002_respond.sql")),
    (
        3,
        "agent_controls",
        include_str!("migrations/0003_agent_controls.sql"),
    ),
    (4, "bursts", include_str!("migrations/0004_bursts.sql")),
];

/// The advisory lock key that serialises migrations ("hookrout" in ASCII).
const LOCK_KEY: i64 = 0x686f_6f6b_726f_7574;

/// The newest schema version this build knows.
pub(crate) fn latest() -> i32 {
    MIGRATIONS.last().map_or(0, |m| m.0)
}

/// Applies the migrations the database lacks; returns the versions applied
/// now. A database whose schema is newer than this build is refused.
pub(crate) async fn run(client: &mut Client) -> Result<Vec<i32>, StoreError> {
    client
        .execute("SELECT pg_advisory_lock($1)", &[&LOCK_KEY])
        .await
        .map_err(db_err)?;
    let result = apply(client).await;
    // Released whatever happened; a lost connection releases it too.
    let _ = client
        .execute("SELECT pg_advisory_unlock($1)", &[&LOCK_KEY])
        .await;
    result
}

async fn apply(client: &mut Client) -> Result<Vec<i32>, StoreError> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS hookrouter_schema (
                 version    integer PRIMARY KEY,
                 name       text NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now()
             )",
        )
        .await
        .map_err(db_err)?;
    let rows = client
        .query("SELECT version FROM hookrouter_schema", &[])
        .await
        .map_err(db_err)?;
    let applied: Vec<i32> = rows.iter().map(|r| r.get(0)).collect();
    if let Some(&newest) = applied.iter().max() {
        if newest > latest() {
            return Err(StoreError::Schema {
                found: u64::try_from(newest).unwrap_or(0),
                supported: u64::try_from(latest()).unwrap_or(0),
            });
        }
    }
    let mut done = Vec::new();
    for &(version, name, sql) in MIGRATIONS {
        if applied.contains(&version) {
            continue;
        }
        // Each migration with its record in one transaction: a failure
        // leaves the previous version, never half of one.
        let txn = client.transaction().await.map_err(db_err)?;
        txn.batch_execute(sql).await.map_err(db_err)?;
        txn.execute(
            "INSERT INTO hookrouter_schema (version, name) VALUES ($1, $2)",
            &[&version, &name],
        )
        .await
        .map_err(db_err)?;
        txn.commit().await.map_err(db_err)?;
        done.push(version);
    }
    Ok(done)
}
