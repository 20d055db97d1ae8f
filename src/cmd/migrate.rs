//! `hookrouter migrate --store URL`: create or upgrade the store's schema.
//!
//! On PostgreSQL it applies the missing numbered migrations under the
//! advisory lock (safe beside running replicas, which do the same at start)
//! and prints the version; on redb it opens the file, which upgrades it.

use std::process::ExitCode;
use std::time::Duration;

use crate::store::{Store, StoreUrl, pg};

/// Runs the command; 0 when the schema is current, 2 when it cannot be.
pub fn run(store: &StoreUrl, timeout: Duration) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
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
