//! Migrations are embedded at build time so that the binary needs no files
//! beside it; each backend has its own dialect of the same schema.

use std::borrow::Cow;

use sqlx::SqlSafeStr;
use sqlx::migrate::{Migration, MigrationType, Migrator};

macro_rules! migrations {
    ($dir:literal: $($version:literal $name:literal $file:literal),* $(,)?) => {
        &[$(($version, $name, include_str!(concat!("../../../migrations/", $dir, "/", $file)))),*]
    };
}

const POSTGRES: &[(i64, &str, &str)] = migrations!("postgres":
    1 "init" "0001_init.sql",
    2 "trace_ids" "0002_trace_ids.sql",
    3 "alert_lifecycle" "0003_alert_lifecycle.sql",
    4 "effect_sizes" "0004_effect_sizes.sql",
    5 "calibration" "0005_calibration.sql",
    6 "event_positions" "0006_event_positions.sql",
);
const SQLITE: &[(i64, &str, &str)] = migrations!("sqlite":
    1 "init" "0001_init.sql",
    2 "trace_ids" "0002_trace_ids.sql",
    3 "alert_lifecycle" "0003_alert_lifecycle.sql",
    4 "effect_sizes" "0004_effect_sizes.sql",
    5 "calibration" "0005_calibration.sql",
    6 "event_positions" "0006_event_positions.sql",
);

pub fn postgres() -> Migrator {
    migrator(POSTGRES)
}

pub fn sqlite() -> Migrator {
    migrator(SQLITE)
}

fn migrator(files: &[(i64, &'static str, &'static str)]) -> Migrator {
    Migrator::with_migrations(
        files
            .iter()
            .map(|(version, name, sql)| {
                Migration::new(
                    *version,
                    Cow::Borrowed(*name),
                    MigrationType::Simple,
                    sql.into_sql_str(),
                    false,
                )
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every file under migrations/ is embedded, in order, for both backends.
    #[test]
    fn all_migration_files_are_embedded() {
        for (dir, list) in [("postgres", POSTGRES), ("sqlite", SQLITE)] {
            let path = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/").to_string() + dir;
            let mut files: Vec<String> = std::fs::read_dir(&path)
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            files.sort();
            assert_eq!(files.len(), list.len(), "{dir}: {files:?}");
            for (file, (version, name, _)) in files.iter().zip(list) {
                assert_eq!(file, &format!("{version:04}_{name}.sql"));
            }
        }
    }
}
