//! `deployctl dashboard`: flags into access rules, the token read once, then the server.

use super::{connect, daemon::shutdown_token, GlobalArgs};
use crate::dashboard::{self, auth, DashboardConfig};
use clap::Args;
use std::net::SocketAddr;
use std::path::PathBuf;

pub const EXAMPLES: &str = "\
Examples:
  # Watch the fleet in a browser at http://127.0.0.1:3100/
  deployctl dashboard

  # With promote, pause, abort... for whoever signs in with the token
  openssl rand -hex 32 > ~/.config/deployctl/dashboard.token
  deployctl dashboard --allow-actions \\
    --token-file ~/.config/deployctl/dashboard.token

  # For the team, behind a TLS proxy: every page needs the token
  deployctl --store etcd://10.0.0.1:2379 dashboard --listen 0.0.0.0:3100 \\
    --token-file /etc/deployctl/dashboard.token

Pages: Rollouts, a rollout's steps and machines, Machines, Events; all live.
On loopback pages are open to local users and actions need the token; on any
other address every request needs it.";

#[derive(Args, Debug)]
pub struct DashboardArgs {
    /// The address to listen on (IP:PORT). Beyond loopback it needs --token-file, and
    /// it is plain HTTP: put a TLS proxy in front.
    #[arg(long, default_value = dashboard::DEFAULT_LISTEN, value_name = "ADDR")]
    pub listen: SocketAddr,
    /// A file holding the token users sign in with (at least 32 printable characters;
    /// at most 8 KiB).
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Let a signed-in user promote, pause, resume, abort, retry and undo rollouts.
    /// Needs --token-file.
    #[arg(long)]
    pub allow_actions: bool,
}

/// The token the flags give (`None`: no sign-in), or why the flags are refused.
pub fn token(args: &DashboardArgs) -> anyhow::Result<Option<Vec<u8>>> {
    if args.allow_actions && args.token_file.is_none() {
        anyhow::bail!(
            "--allow-actions needs --token-file: actions are only for users who sign in \
             with its token"
        );
    }
    if !args.listen.ip().is_loopback() && args.token_file.is_none() {
        anyhow::bail!(
            "--listen {} is not a loopback address: give --token-file, so that only \
             users with the token see the fleet",
            args.listen
        );
    }
    match &args.token_file {
        Some(p) => Ok(Some(auth::read_token_file(p).map_err(anyhow::Error::msg)?)),
        None => Ok(None),
    }
}

pub async fn run(g: &GlobalArgs, args: DashboardArgs) -> anyhow::Result<i32> {
    let token = token(&args)?;
    let client = connect(g).await?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", args.listen))?;
    let addr = listener.local_addr()?;
    // The Host names allowed are those of the port actually bound (`--listen :0`).
    let access = auth::Access::new(token, addr, args.allow_actions);
    outln!("dashboard on http://{addr}/");
    dashboard::serve(
        listener,
        client,
        DashboardConfig { access },
        shutdown_token(),
    )
    .await?;
    Ok(0)
}
