//! `deployctl webhook`: flags into a config, the secret read once, then the server.

use super::{connect, daemon::shutdown_token, GlobalArgs};
use crate::webhook::{self, WebhookConfig};
use clap::Args;
use std::io::Read;
use std::path::PathBuf;

pub const EXAMPLES: &str = "\
Examples:
  # On loopback, behind a TLS proxy, against etcd
  deployctl --store etcd://10.0.0.1:2379 webhook --listen 127.0.0.1:8080 \\
    --secret-file /etc/deployctl/webhook.key

  # What a CI job sends after a build (the key in $KEY)
  sum=$(sha256sum api.tar.gz | cut -d' ' -f1)
  body='{\"version\": \"1.4.2\", \"sha256\": \"'$sum'\"}'
  ts=$(date +%s)
  sig=$(printf '%s.%s' \"$ts\" \"$body\" | openssl dgst -sha256 -hmac \"$KEY\" \\
    | sed 's/^.* //')
  curl -fsS -X POST \\
    https://deploy.example.com/v1/namespaces/default/rollouts/api/version \\
    -H \"X-Deployctl-Timestamp: $ts\" -H \"X-Deployctl-Signature: sha256=$sig\" \\
    -d \"$body\"

Answers: 200 (set, or already set: {\"changed\": false}), 400 naming the field,
401 for a missing, wrong or older than 5 minutes signature, 404 for an unknown
Rollout, 408 for a body not sent within 10 s, 413 past 64 KiB, 429 past the rate
limit.";

/// Most bytes of the secret file.
const MAX_SECRET_BYTES: u64 = 8 * 1024;

#[derive(Args, Debug)]
pub struct WebhookArgs {
    /// The address to listen on. Plain HTTP: keep it on loopback behind a TLS proxy.
    #[arg(long, default_value = "127.0.0.1:8080", value_name = "ADDR")]
    pub listen: std::net::SocketAddr,
    /// The file holding the shared HMAC key (its content, trimmed; at most 8 KiB).
    #[arg(long, value_name = "FILE")]
    pub secret_file: PathBuf,
    /// Requests one source address may make per minute (also its burst).
    #[arg(long, default_value_t = 60, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub rate_per_minute: u32,
}

fn read_secret(path: &PathBuf) -> anyhow::Result<Vec<u8>> {
    let file = std::fs::File::open(path)
        .map_err(|e| anyhow::anyhow!("cannot read secret file {}: {e}", path.display()))?;
    let mut buf = Vec::new();
    file.take(MAX_SECRET_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(|e| anyhow::anyhow!("cannot read secret file {}: {e}", path.display()))?;
    if buf.len() as u64 > MAX_SECRET_BYTES {
        anyhow::bail!("secret file {} is larger than 8 KiB", path.display());
    }
    let key = buf.trim_ascii().to_vec();
    if key.len() < 16 {
        anyhow::bail!(
            "secret file {} holds fewer than 16 bytes: use a long random key (openssl rand -hex 32)",
            path.display()
        );
    }
    Ok(key)
}

pub async fn run(g: &GlobalArgs, args: WebhookArgs) -> anyhow::Result<i32> {
    let secret = read_secret(&args.secret_file)?;
    let client = connect(g).await?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", args.listen))?;
    let addr = listener.local_addr()?;
    outln!("webhook listening on {addr}");
    let config = WebhookConfig {
        secret,
        per_minute: args.rate_per_minute,
    };
    webhook::serve(listener, client, config, shutdown_token()).await?;
    Ok(0)
}
