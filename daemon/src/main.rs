#[tokio::main]
async fn main() -> anyhow::Result<()> {
    modelwatch::cli::main().await
}
