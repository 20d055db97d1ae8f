//! `hookrouter migrate --store URL`: create or upgrade the store's schema;
//! `hookrouter migrate --from redb:PATH --to postgres://…`: copy a redb
//! file's queue into PostgreSQL.
//!
//! On PostgreSQL it applies the missing numbered migrations under the
//! advisory lock (safe beside running replicas, which do the same at start)
//! and prints the version; on redb it opens the file, which upgrades it.
//! The copy (see `store::pg::import`) applies the schema first, refuses
//! while a server holds the file, and prints what it copied.

use std::process::ExitCode;
use std::time::Duration;

use crate::store::{Store, StoreUrl, pg};

/// Runs the command; 0 when the schema is current, 2 when it cannot be.
pub fn run(store: &StoreUrl, timeout: Duration) -> ExitCode {
    let Some(runtime) = runtime() else {
        return ExitCode::from(2);
    };
    let result = runtime.block_on(async {
        match store {
            StoreUrl::Redb(path) => {
                let s = Store::open(path)?;
                s.close().await?;
                Ok(format!("{}: schema is current", store.describe()))
            }
            StoreUrl::Postgres(url) => {
                let applied = pg::migrate_schema(url, timeout).await?;
                let names: Vec<String> = applied.iter().map(i32::to_string).collect();
                Ok(format!(
                    "{}: schema at version {}{}",
                    store.describe(),
                    pg::migrate::latest(),
                    if names.is_empty() {
                        " (nothing to apply)".to_owned()
                    } else {
                        format!(" (applied {})", names.join(", "))
                    }
                ))
            }
        }
    });
    match result {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            let e: crate::store::StoreError = e;
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

fn runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => Some(r),
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            None
        }
    }
}

/// Copies the redb store `from` into the PostgreSQL store `to`; 0 when
/// everything was copied (or was there already), 2 otherwise. Safe to run
/// again: what an earlier run copied is not copied twice.
pub fn copy(from: &StoreUrl, to: &StoreUrl, timeout: Duration) -> ExitCode {
    let (StoreUrl::Redb(path), StoreUrl::Postgres(url)) = (from, to) else {
        return crate::cmd::usage_error(
            "migrate copies from a redb file to PostgreSQL: --from redb:PATH --to postgres://USER@HOST:PORT/DB",
        );
    };
    let Some(runtime) = runtime() else {
        return ExitCode::from(2);
    };
    match runtime.block_on(pg::import::import_redb(path, url, timeout)) {
        Ok(stats) => {
            println!("{} -> {}: {stats}", from.describe(), to.describe());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
