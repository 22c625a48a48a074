//! Migrations are embedded at build time so that the binary needs no files
//! beside it; each backend has its own dialect of the same schema.

use std::borrow::Cow;

use sqlx::SqlSafeStr;
use sqlx::migrate::{Migration, MigrationType, Migrator};

/// The list of migrations, once; each backend's directory holds its dialect
/// of every file.
macro_rules! migrations {
    ($dir:literal) => {
        &[
            migrations!(@ $dir, 1, "0001_init.sql", "init"),
            migrations!(@ $dir, 2, "0002_trace_ids.sql", "trace_ids"),
            migrations!(@ $dir, 3, "0003_alert_lifecycle.sql", "alert_lifecycle"),
            migrations!(@ $dir, 4, "0004_effect_sizes.sql", "effect_sizes"),
            migrations!(@ $dir, 5, "0005_calibration.sql", "calibration"),
            migrations!(@ $dir, 6, "0006_event_positions.sql", "event_positions"),
            migrations!(@ $dir, 7, "0007_outbox_claims.sql", "outbox_claims"),
            migrations!(@ $dir, 8, "0008_window_counters.sql", "window_counters"),
            migrations!(@ $dir, 9, "0009_effect_bands.sql", "effect_bands"),
            migrations!(@ $dir, 10, "0010_reader_role.sql", "reader_role"),
            migrations!(@ $dir, 11, "0011_score_bands.sql", "score_bands"),
            migrations!(@ $dir, 12, "0012_window_classes.sql", "window_classes"),
            migrations!(@ $dir, 13, "0013_open_alerts_by_model.sql", "open_alerts_by_model"),
            migrations!(@ $dir, 14, "0014_windows_by_model_scored.sql", "windows_by_model_scored"),
            migrations!(@ $dir, 15, "0015_window_clients.sql", "window_clients"),
            migrations!(@ $dir, 16, "0016_stored_halves.sql", "stored_halves"),
        ]
    };
    (@ $dir:literal, $version:literal, $file:literal, $name:literal) => {
        (
            $version,
            $name,
            include_str!(concat!("../../../migrations/", $dir, "/", $file)),
        )
    };
}

const POSTGRES: &[(i64, &str, &str)] = migrations!("postgres");
const SQLITE: &[(i64, &str, &str)] = migrations!("sqlite");

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
