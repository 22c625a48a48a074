//! Secrets and transport: PostgreSQL over TLS (the server `tests/run.sh`
//! ensured has TLS on), passwords from the environment or a file, and a
//! printed config that holds no secret.

mod common;

use std::process::Command;

use common::{daemon_binary, postgres_admin_url, unique};
use modelwatch::store::Store;
use sqlx::postgres::PgPool;

fn with_query(url: &str, query: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{query}")
}

#[tokio::test]
async fn the_store_speaks_tls_and_verifies_the_server() {
    let base = postgres_admin_url();
    let admin = PgPool::connect(&base).await.unwrap();
    let (ssl, cert): (String, String) =
        sqlx::query_as("SELECT current_setting('ssl'), current_setting('ssl_cert_file')")
            .fetch_one(&admin)
            .await
            .unwrap();
    assert_eq!(ssl, "on", "tests/run.sh turns TLS on");

    let require = with_query(&base, "sslmode=require");
    let pool = PgPool::connect(&require).await.unwrap();
    let encrypted: bool =
        sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(encrypted, "sslmode=require gave a plain connection");
    Store::connect(&require, 1)
        .await
        .unwrap()
        .ping()
        .await
        .unwrap();

    // The server's own certificate verifies it; a name it was not issued
    // for (127.0.0.1) fails full verification.
    let verified = with_query(&base, &format!("sslmode=verify-ca&sslrootcert={cert}"));
    Store::connect(&verified, 1)
        .await
        .unwrap()
        .ping()
        .await
        .unwrap();
    let full = with_query(&base, &format!("sslmode=verify-full&sslrootcert={cert}"));
    let err = Store::connect(&full, 1)
        .await
        .expect_err("verify-full accepted a certificate for another name");
    let text = format!("{err:?}").to_lowercase();
    assert!(
        text.contains("tls") || text.contains("certificate") || text.contains("ssl"),
        "{text}"
    );

    // The daemon's own commands take the same URL.
    let out = Command::new(daemon_binary())
        .arg("migrate")
        .env(
            "MODELWATCH_STORE__URL",
            with_query(
                &common::fresh_database(&unique("mw_tls")).await,
                &format!("sslmode=verify-ca&sslrootcert={cert}"),
            ),
        )
        .env_remove("MODELWATCH_CONFIG")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn passwords_come_from_the_environment_or_a_file_and_are_never_printed() {
    let dir = std::env::temp_dir().join(unique("mw_secrets"));
    std::fs::create_dir_all(&dir).unwrap();
    // A password variable that is not set stops the start with its name.
    let out = Command::new(daemon_binary())
        .arg("migrate")
        .env("MODELWATCH_STORE__URL", postgres_admin_url())
        .env("MODELWATCH_STORE__PASSWORD_ENV", "MW_TEST_UNSET_PASSWORD")
        .env_remove("MW_TEST_UNSET_PASSWORD")
        .env_remove("MODELWATCH_CONFIG")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("MW_TEST_UNSET_PASSWORD"), "{stderr}");

    // check-config prints names of variables and files, never their values.
    let sasl = dir.join("sasl-password");
    std::fs::write(&sasl, "kafka-s3cret\n").unwrap();
    let config = dir.join("modelwatch.toml");
    std::fs::write(
        &config,
        format!(
            "[source.kafka]\nsasl_password_file = \"{}\"\n[source.kafka.properties]\n\"sasl.password\" = \"inline-s3cret\"\n[telemetry.otlp.headers]\nauthorization = \"Bearer otlp-s3cret\"\n",
            sasl.display()
        ),
    )
    .unwrap();
    let out = Command::new(daemon_binary())
        .args(["check-config", "--config"])
        .arg(&config)
        .env("MODELWATCH_STORE__URL", "postgres://mw:url-s3cret@db/mw")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for secret in ["kafka-s3cret", "inline-s3cret", "otlp-s3cret", "url-s3cret"] {
        assert!(!text.contains(secret), "{secret} printed:\n{text}");
    }
    assert!(text.contains(&sasl.display().to_string()), "{text}");
}
