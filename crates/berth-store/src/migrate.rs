//! Versioned schema migrations for both metadata backends, kept in one place:
//! `migrations/<backend>/NNNN_name.sql`, embedded in the binary. Each backend records the
//! versions it applied in `schema_migrations` and applies the missing ones in order, in one
//! transaction with the record, so a crash mid-migration leaves the previous version whole.
//! A new migration is one file per backend and one line in each list below.

use crate::{Result, StoreError};

#[derive(Debug)]
pub(crate) struct Migration {
    pub version: i64,
    pub name: &'static str,
    pub sql: &'static str,
}

pub(crate) const SQLITE: &[Migration] = &[
    Migration {
        version: 1,
        name: "initial",
        sql: include_str!("../migrations/sqlite/0001_initial.sql"),
    },
    Migration {
        version: 2,
        name: "manifests_times",
        sql: include_str!("../migrations/sqlite/0002_manifests_times.sql"),
    },
    Migration {
        version: 3,
        name: "upload_hash_state",
        sql: include_str!("../migrations/sqlite/0003_upload_hash_state.sql"),
    },
];
pub(crate) const POSTGRES: &[Migration] = &[
    Migration {
        version: 1,
        name: "initial",
        sql: include_str!("../migrations/postgres/0001_initial.sql"),
    },
    Migration {
        version: 2,
        name: "manifests_times",
        sql: include_str!("../migrations/postgres/0002_manifests_times.sql"),
    },
    Migration {
        version: 3,
        name: "upload_hash_state",
        sql: include_str!("../migrations/postgres/0003_upload_hash_state.sql"),
    },
];

/// Valid in both dialects.
pub(crate) const CREATE_TABLE: &str = "CREATE TABLE IF NOT EXISTS schema_migrations(
    version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)";

/// The migrations still to apply to a database that recorded `applied`, in order. A
/// database migrated by a newer berth is refused rather than written with an old schema.
pub(crate) fn pending<'a>(all: &'a [Migration], applied: &[i64]) -> Result<Vec<&'a Migration>> {
    let known = all.last().map_or(0, |m| m.version);
    if let Some(newer) = applied.iter().find(|v| **v > known) {
        return Err(StoreError::Schema(format!(
            "the database is at schema version {newer}, newer than this berth knows ({known}); \
             run a berth at least as new as the one that migrated it"
        )));
    }
    Ok(all.iter().filter(|m| !applied.contains(&m.version)).collect())
}

pub(crate) fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_count_up_from_one_in_both_backends() {
        for list in [SQLITE, POSTGRES] {
            for (i, m) in list.iter().enumerate() {
                assert_eq!(m.version, i as i64 + 1, "migration {} is out of order", m.name);
                assert!(!m.sql.trim().is_empty(), "migration {} is empty", m.name);
            }
        }
        let names = |l: &[Migration]| l.iter().map(|m| (m.version, m.name)).collect::<Vec<_>>();
        assert_eq!(names(SQLITE), names(POSTGRES), "both backends migrate in step");
    }

    #[test]
    fn pending_skips_applied_and_refuses_newer() {
        let all = SQLITE;
        assert_eq!(pending(all, &[]).unwrap().len(), all.len());
        assert!(pending(all, &[1]).unwrap().iter().all(|m| m.version != 1));
        let err = pending(all, &[1, 999]).unwrap_err().to_string();
        assert!(err.contains("999"), "{err}");
    }
}
