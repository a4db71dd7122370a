//! The `deployctl` command line: kubectl-shaped subcommands over the typed store client.
//!
//! # Layout
//!
//! - this file: the clap definitions, logging, connecting, exit codes and dispatch.
//! - [`manifest`]: reading files, directories and stdin into validated objects.
//! - [`apply`], [`get`], [`describe`], [`delete`], [`rollout`], [`diff`], [`sync`],
//!   [`logs`]: one file per command; [`label`] (`label`, `annotate`) and [`machine`]
//!   (`cordon`, `uncordon`, `drain`): one file per pair of commands; [`edit`], [`explain`].
//! - [`output`]: tables, ages, `-o yaml|json|name`.
//! - [`view`]: the live rollout view of `get rollouts -w` (pure rendering, snapshot-tested).
//! - [`daemon`]: `controller` and `agent`, which hand over to their own modules.
//! - [`webhook`]: `deployctl webhook`, the build trigger.

/// `println!` for command output: `deployctl get events | head` must end quietly, as
/// Unix tools do, not panic with "failed printing to stdout: Broken pipe". (Restoring the
/// default SIGPIPE instead would also kill the process on a socket whose peer went away:
/// vectored socket writes do not pass MSG_NOSIGNAL.)
macro_rules! outln {
    () => {
        $crate::cli::write_stdout(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::cli::write_stdout(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `print!` for command output; see [`outln!`].
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::cli::write_stdout(format_args!($($arg)*))
    };
}

pub mod analysis;
pub mod apply;
pub mod complete;
pub mod daemon;
pub mod dashboard;
pub mod delete;
pub mod demo;
pub mod depends;
pub mod describe;
pub mod diff;
pub mod docs;
pub mod edit;
pub mod explain;
pub mod get;
pub mod label;
pub mod logs;
pub mod machine;
pub mod manifest;
pub mod output;
pub mod rollout;
pub mod run;
pub mod sync;
pub mod template;
pub mod topology;
pub mod up;
pub mod view;
pub mod webhook;

use crate::api::KindName;
use crate::store::{Client, Error as StoreError, EtcdOptions, StoreUrl};
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::time::Duration;

/// Where `--help` lists the etcd TLS and user flags.
const ETCD_HEADING: &str = "etcd connection (TLS, user)";

/// The environment variable that holds the etcd user's password.
pub const ETCD_PASSWORD_ENV: &str = "DEPLOYCTL_ETCD_PASSWORD";

/// How long connecting to a store may take before the command gives up.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(4);

/// Dispatches on a [`KindName`] known only at run time to code generic over the kind:
/// `for_kind!(kind, K => get_kind::<K>(..).await)`.
macro_rules! for_kind {
    ($kind:expr, $K:ident => $body:expr) => {
        match $kind {
            $crate::api::KindName::Machine => {
                type $K = $crate::api::Machine;
                $body
            }
            $crate::api::KindName::Application => {
                type $K = $crate::api::Application;
                $body
            }
            $crate::api::KindName::Rollout => {
                type $K = $crate::api::Rollout;
                $body
            }
            $crate::api::KindName::Instance => {
                type $K = $crate::api::Instance;
                $body
            }
            $crate::api::KindName::Event => {
                type $K = $crate::api::Event;
                $body
            }
            $crate::api::KindName::Sync => {
                type $K = $crate::api::GitSync;
                $body
            }
            $crate::api::KindName::Notifier => {
                type $K = $crate::api::Notifier;
                $body
            }
            $crate::api::KindName::Task => {
                type $K = $crate::api::Task;
                $body
            }
            $crate::api::KindName::AnalysisTemplate => {
                type $K = $crate::api::AnalysisTemplate;
                $body
            }
        }
    };
}
pub(crate) use for_kind;

const MAIN_EXAMPLES: &str = "\
Examples:
  # Deploy an application and its rollout, then follow it
  deployctl apply -f manifests/
  deployctl rollout status api

  # What CI runs after a build
  deployctl set version api 1.4.2 \\
    --sha256 $(sha256sum api.tar.gz | cut -d' ' -f1)

  # Against etcd instead of the embedded store
  deployctl --store etcd://10.0.0.1:2379 get rollouts -A

  # etcd over TLS, as a user (the password only from the environment)
  DEPLOYCTL_ETCD_PASSWORD=... deployctl --store etcds://10.0.0.1:2379 \\
    --etcd-ca ca.pem --etcd-user ci get rollouts -A";

/// Continuous deployment for fleets of plain servers, driven the way Kubernetes drives Pods.
#[derive(Parser, Debug)]
#[command(name = "deployctl", version, after_help = MAIN_EXAMPLES)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags every subcommand takes.
#[derive(Args, Debug, Clone)]
pub struct GlobalArgs {
    /// The store: `etcd://host:port[,host:port...]`, `etcds://...` for etcd over TLS, a
    /// file path for the embedded store, or nothing for the embedded store at
    /// `$XDG_STATE_HOME/deployctl/store.db` (`~/.local/state/deployctl/store.db`).
    ///
    /// A file whose directory does not exist is refused (a typo would otherwise start an
    /// empty store), unless --create is given; the default path is always created.
    #[arg(long, global = true, env = "DEPLOYCTL_STORE", value_name = "URL")]
    pub store: Option<String>,
    /// Create the directory of the embedded store file that --store names, if missing.
    #[arg(long, global = true)]
    pub create: bool,
    /// CA certificate (PEM) that signed etcd's server certificate; turns on TLS.
    #[arg(long, global = true, env = "DEPLOYCTL_ETCD_CA", value_name = "FILE", help_heading = ETCD_HEADING)]
    pub etcd_ca: Option<PathBuf>,
    /// Client certificate (PEM) for etcd's --client-cert-auth; needs --etcd-key.
    #[arg(long, global = true, env = "DEPLOYCTL_ETCD_CERT", value_name = "FILE", help_heading = ETCD_HEADING)]
    pub etcd_cert: Option<PathBuf>,
    /// Private key (PEM) of --etcd-cert.
    #[arg(long, global = true, env = "DEPLOYCTL_ETCD_KEY", value_name = "FILE", help_heading = ETCD_HEADING)]
    pub etcd_key: Option<PathBuf>,
    /// etcd user; the password is read from DEPLOYCTL_ETCD_PASSWORD only (a flag would
    /// show in ps).
    #[arg(long, global = true, env = "DEPLOYCTL_ETCD_USER", value_name = "USER", help_heading = ETCD_HEADING)]
    pub etcd_user: Option<String>,
    /// The namespace of namespaced objects.
    #[arg(
        short = 'n',
        long,
        global = true,
        default_value = "default",
        value_name = "NS"
    )]
    pub namespace: String,
    /// Log to stderr: -v info, -vv debug, -vvv trace (RUST_LOG overrides).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// How logs are written: `text` for people, `json` for log shippers (one JSON
    /// object a line, with the fields of the current span and its parents).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "DEPLOYCTL_LOG_FORMAT")]
    pub log_format: LogFormat,
}

/// `--log-format`.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create or update objects from files, directories or stdin.
    #[command(after_help = apply::EXAMPLES)]
    Apply(apply::ApplyArgs),
    /// List objects, or watch them change.
    #[command(after_help = get::EXAMPLES)]
    Get(get::GetArgs),
    /// Show one object in detail, with its conditions and recent events.
    #[command(after_help = describe::EXAMPLES)]
    Describe(describe::DescribeArgs),
    /// Delete objects by name or by the manifests that declared them.
    #[command(after_help = delete::EXAMPLES)]
    Delete(delete::DeleteArgs),
    /// Edit an object's YAML in $KUBE_EDITOR, $EDITOR or vi; written with compare-and-swap.
    #[command(after_help = edit::EXAMPLES)]
    Edit(edit::EditArgs),
    /// A kind's or field's type, default, description and the fields below it.
    #[command(after_help = explain::EXAMPLES)]
    Explain(explain::ExplainArgs),
    /// Add, change or remove labels of objects.
    #[command(after_help = label::LABEL_EXAMPLES)]
    Label(label::MetaArgs),
    /// Add, change or remove annotations of objects.
    #[command(after_help = label::ANNOTATE_EXAMPLES)]
    Annotate(label::MetaArgs),
    /// Mark a Machine unschedulable: rollouts leave it out; what it runs keeps running.
    #[command(after_help = machine::CORDON_EXAMPLES)]
    Cordon(machine::MachineArgs),
    /// Mark a Machine schedulable again.
    #[command(after_help = machine::UNCORDON_EXAMPLES)]
    Uncordon(machine::MachineArgs),
    /// Cordon a Machine, then wait until no rollout counts it.
    ///
    /// Drain does not stop services or remove releases: the machine keeps running what
    /// it runs. It waits until every Rollout whose Application selects the machine has
    /// recounted its desired machines without it and the machine's Instances have
    /// finished what they were doing. `uncordon` undoes it.
    #[command(after_help = machine::DRAIN_EXAMPLES)]
    Drain(machine::DrainArgs),
    /// Follow, pause, resume, promote, abort, retry, restart or undo a Rollout.
    #[command(subcommand, after_help = rollout::EXAMPLES)]
    Rollout(rollout::RolloutCommand),
    /// Run a command on the machines of an Application, as its hooks run.
    #[command(after_help = run::EXAMPLES)]
    Run(run::RunArgs),
    /// Change one field of an object: the one-liners CI calls.
    #[command(subcommand, after_help = rollout::SET_EXAMPLES)]
    Set(rollout::SetCommand),
    /// Print the recent output of an Instance's hooks and service, or a Rollout's machines'.
    #[command(after_help = logs::EXAMPLES)]
    Logs(logs::LogsArgs),
    /// Show what apply would change, as a unified diff (exit 1 when there are changes).
    #[command(after_help = diff::EXAMPLES)]
    Diff(diff::DiffArgs),
    /// Keep the store equal to the manifests of a Git repository.
    #[command(after_help = sync::EXAMPLES)]
    Sync(sync::SyncArgs),
    /// Run the control loop (several may run; one leads).
    #[command(after_help = daemon::CONTROLLER_EXAMPLES)]
    Controller(daemon::ControllerArgs),
    /// Run the node agent on one machine.
    #[command(after_help = daemon::AGENT_EXAMPLES)]
    Agent(daemon::AgentArgs),
    /// Serve the build webhook: a signed POST sets a Rollout's version.
    #[command(after_help = webhook::EXAMPLES)]
    Webhook(webhook::WebhookArgs),
    /// Serve a live web dashboard of the rollouts, machines and events.
    #[command(after_help = dashboard::EXAMPLES)]
    Dashboard(dashboard::DashboardArgs),
    /// Run a controller and local agents on this machine (and, with --demo, a rollout).
    #[command(after_help = up::EXAMPLES)]
    Up(up::UpArgs),
    /// The demo service of `up --demo`: serves its VERSION over HTTP.
    #[command(
        hide = true,
        after_help = "Examples:\n  deployctl demo-server --port 18081\n  deployctl demo-server --probe --port 18081"
    )]
    DemoServer(demo::DemoServerArgs),
    /// Print a shell completion script: subcommands, flags, kinds, and the names of
    /// objects, machines and namespaces from the store (asked with a short timeout).
    #[command(after_help = COMPLETION_EXAMPLES)]
    Completion {
        #[arg(value_enum)]
        shell: complete::Shell,
    },
    /// The candidates for the last of WORDS, one a line: what the completion scripts call.
    #[command(
        name = "__complete",
        hide = true,
        after_help = "Examples:\n  deployctl __complete -- get ro ''"
    )]
    Complete {
        #[arg(raw = true)]
        words: Vec<String>,
    },
    /// Write the JSON Schemas of the user kinds to a directory.
    #[command(
        hide = true,
        after_help = "Examples:\n  deployctl schemas --out schemas/"
    )]
    Schemas {
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

const COMPLETION_EXAMPLES: &str = "\
Examples:
  deployctl completion bash > /etc/bash_completion.d/deployctl
  deployctl completion zsh > \"${fpath[1]}/_deployctl\"
  deployctl completion fish > ~/.config/fish/completions/deployctl.fish";

/// `-o` of `get`: `wide`, `yaml`, `json`, `name`, `jsonpath=TEMPLATE` or
/// `custom-columns=SPEC`.
#[derive(Clone, Debug)]
pub enum OutputFormat {
    Wide,
    Yaml,
    Json,
    Name,
    /// kubectl's JSONPath template, applied to the object or to the List.
    JsonPath(std::sync::Arc<template::Template>),
    /// kubectl's `NAME:PATH,...` columns.
    CustomColumns(std::sync::Arc<Vec<template::Column>>),
}

impl OutputFormat {
    /// Parses `-o`'s value; clap names the flag when this refuses it.
    pub fn parse(text: &str) -> Result<OutputFormat, String> {
        let (word, arg) = match text.split_once('=') {
            Some((w, a)) => (w, Some(a)),
            None => (text, None),
        };
        match (word, arg) {
            ("wide", None) => Ok(OutputFormat::Wide),
            ("yaml", None) => Ok(OutputFormat::Yaml),
            ("json", None) => Ok(OutputFormat::Json),
            ("name", None) => Ok(OutputFormat::Name),
            ("jsonpath", Some(t)) => template::Template::parse(t)
                .map(|t| OutputFormat::JsonPath(std::sync::Arc::new(t)))
                .map_err(|e| e.to_string()),
            ("custom-columns", Some(spec)) => template::parse_columns(spec)
                .map(|c| OutputFormat::CustomColumns(std::sync::Arc::new(c)))
                .map_err(|e| e.to_string()),
            ("jsonpath" | "custom-columns", None) => {
                Err(format!("{word} needs a value: -o {word}=..."))
            }
            _ => Err(
                "use one of wide, yaml, json, name, jsonpath=TEMPLATE, custom-columns=SPEC"
                    .to_string(),
            ),
        }
    }
}

/// Errors that decide the exit code or print in kubectl's own words.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The problems were already printed; exit with this status.
    #[error("exit status {0}")]
    Exit(i32),
    #[error("Error from server (NotFound): {plural} \"{name}\" not found")]
    NotFound { plural: &'static str, name: String },
    #[error("unknown kind {0:?}: use one of machines, applications, rollouts, instances, events, syncs, notifiers, tasks (or mc, app, ro, inst, ev, nt, tk)")]
    UnknownKind(String),
}

/// Writes command output. A reader that went away (`| head`) ends the process quietly
/// with status 0; any other write error ends it with status 1 and says so.
pub fn write_stdout(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    if let Err(e) = std::io::stdout().lock().write_fmt(args) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: cannot write to stdout: {e}");
        std::process::exit(1);
    }
}

/// Sets up tracing to stderr in `format`: warn by default, more with `-v`, RUST_LOG wins.
pub fn init_logging(verbose: u8, format: LogFormat) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder
            // Colours only for a person at a terminal, not in log files.
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
        // One object a line: the event's fields, its span and every parent span's fields.
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .try_init(),
    };
}

/// Runs one command; returns the process exit status (errors are printed here, escaped:
/// an error may quote a value from the store).
pub async fn run(cli: Cli) -> i32 {
    match dispatch(cli).await {
        Ok(code) => code,
        Err(e) => match e.downcast_ref::<CliError>() {
            Some(CliError::Exit(code)) => *code,
            Some(not_found @ CliError::NotFound { .. }) => {
                eprintln!("{}", output::escape_lines(&not_found.to_string()));
                1
            }
            _ => {
                eprintln!("error: {}", output::escape_lines(&format!("{e:#}")));
                1
            }
        },
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<i32> {
    let g = cli.global;
    match cli.command {
        Command::Apply(args) => apply::run(&g, args).await,
        Command::Get(args) => get::run(&g, args).await,
        Command::Describe(args) => describe::run(&g, args).await,
        Command::Delete(args) => delete::run(&g, args).await,
        Command::Edit(args) => edit::run(&g, args).await,
        Command::Explain(args) => explain::run(args),
        Command::Label(args) => label::run(&g, args, label::Field::Labels).await,
        Command::Annotate(args) => label::run(&g, args, label::Field::Annotations).await,
        Command::Cordon(args) => machine::set_cordon(&g, &args.machine, true).await,
        Command::Uncordon(args) => machine::set_cordon(&g, &args.machine, false).await,
        Command::Drain(args) => machine::drain(&g, args).await,
        Command::Rollout(cmd) => rollout::run(&g, cmd).await,
        Command::Set(cmd) => rollout::run_set(&g, cmd).await,
        Command::Diff(args) => diff::run(&g, args).await,
        Command::Run(args) => run::run(&g, args).await,
        Command::Logs(args) => logs::run(&g, args).await,
        Command::Sync(args) => sync::run(&g, args).await,
        Command::Controller(args) => daemon::run_controller(&g, args).await,
        Command::Agent(args) => daemon::run_agent(&g, args).await,
        Command::Webhook(args) => webhook::run(&g, args).await,
        Command::Dashboard(args) => dashboard::run(&g, args).await,
        Command::Up(args) => up::run(&g, args).await,
        Command::DemoServer(args) => demo::run_server(args).await,
        Command::Completion { shell } => {
            out!("{}", complete::script(shell));
            Ok(0)
        }
        Command::Complete { words } => {
            let g = complete::globals_from_words(&g, &words);
            complete::run(&g, words).await
        }
        Command::Schemas { out } => {
            std::fs::create_dir_all(&out)
                .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", out.display()))?;
            for (name, schema) in crate::api::schema::all() {
                let path = out.join(name);
                std::fs::write(&path, crate::api::schema::to_text(&schema))
                    .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
                outln!("{}", path.display());
            }
            Ok(0)
        }
    }
}

/// The store URL from `--store` / `DEPLOYCTL_STORE`, with the `--etcd-*` options and
/// the password from [`ETCD_PASSWORD_ENV`]. An embedded store file named explicitly must
/// be in a directory that exists, unless `--create` is given (see [`StoreDirError`]).
pub fn store_url(g: &GlobalArgs) -> anyhow::Result<StoreUrl> {
    let url = StoreUrl::parse(g.store.as_deref())
        .and_then(|u| u.with_etcd_options(etcd_options(g)))
        .map_err(anyhow::Error::msg)?;
    let explicit = g.store.as_deref().is_some_and(|s| !s.is_empty());
    if let StoreUrl::Embedded(path) = &url {
        if explicit && !g.create {
            check_store_dir(path)?;
        }
    }
    Ok(url)
}

/// Why an explicitly named embedded store cannot be opened without `--create`.
#[derive(Debug, thiserror::Error)]
pub enum StoreDirError {
    #[error("directory {} of store file {} does not exist; pass --create to create it", .dir.display(), .file.display())]
    Missing { dir: PathBuf, file: PathBuf },
    #[error("cannot use store file {}: {source}", .file.display())]
    Unreadable {
        file: PathBuf,
        source: std::io::Error,
    },
}

/// Refuses a store file whose directory does not exist: before anything is created, so
/// that a mistyped `--store` path starts no empty store.
fn check_store_dir(file: &std::path::Path) -> Result<(), StoreDirError> {
    // `x.db` is in the working directory, which exists.
    let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) else {
        return Ok(());
    };
    match dir.try_exists() {
        Ok(true) => Ok(()),
        Ok(false) => Err(StoreDirError::Missing {
            dir: dir.to_path_buf(),
            file: file.to_path_buf(),
        }),
        Err(source) => Err(StoreDirError::Unreadable {
            file: file.to_path_buf(),
            source,
        }),
    }
}

/// The `--etcd-*` flags (or their environment) and the password from the environment.
pub fn etcd_options(g: &GlobalArgs) -> EtcdOptions {
    EtcdOptions {
        tls: false,
        ca: g.etcd_ca.clone(),
        cert: g.etcd_cert.clone(),
        key: g.etcd_key.clone(),
        user: g.etcd_user.clone(),
        password: std::env::var(ETCD_PASSWORD_ENV)
            .ok()
            .filter(|p| !p.is_empty()),
    }
}

/// Connects to the store, failing within [`CONNECT_TIMEOUT`] with the endpoint named.
pub async fn connect(g: &GlobalArgs) -> anyhow::Result<Client> {
    connect_url(&store_url(g)?).await
}

/// Connects to `url`, failing within [`CONNECT_TIMEOUT`] with one message that names the
/// endpoint or file once.
pub async fn connect_url(url: &StoreUrl) -> anyhow::Result<Client> {
    match tokio::time::timeout(CONNECT_TIMEOUT, url.connect()).await {
        Ok(Ok(store)) => Ok(Client::new(store)),
        // These already name the endpoint or the file.
        Ok(Err(
            e @ (StoreError::Unavailable { .. }
            | StoreError::Tls { .. }
            | StoreError::Auth { .. }
            | StoreError::Config(_)),
        )) => Err(e.into()),
        // The embedded store's own messages name its file already.
        Ok(Err(StoreError::Other(m))) if m.contains(&url.to_string()) => Err(anyhow::anyhow!(m)),
        Ok(Err(StoreError::Other(m))) => Err(anyhow::anyhow!("cannot use store {url}: {m}")),
        Ok(Err(e)) => Err(anyhow::anyhow!("cannot use store {url}: {e}")),
        Err(_) => Err(anyhow::anyhow!(
            "cannot reach store at {url}: no answer within {}s",
            CONNECT_TIMEOUT.as_secs()
        )),
    }
}

/// The names of the objects of `K` in the namespace that `sel` selects.
pub(crate) async fn selected_names<K: crate::api::Object>(
    g: &GlobalArgs,
    client: &Client,
    sel: &crate::api::selector::LabelSelector,
) -> anyhow::Result<Vec<String>> {
    let listed = within(
        g,
        client.list::<K>(&crate::store::Scope::Namespace(g.namespace.clone())),
    )
    .await?;
    Ok(listed
        .items
        .iter()
        .filter(|o| sel.matches(&o.meta().labels))
        .map(|o| o.name().to_string())
        .collect())
}

/// Bounds one store call by the same timeout as connecting, so an endpoint that
/// accepted the connection and then died still fails promptly with its name.
pub async fn within<T>(
    g: &GlobalArgs,
    fut: impl std::future::Future<Output = crate::store::Result<T>>,
) -> anyhow::Result<T> {
    match tokio::time::timeout(CONNECT_TIMEOUT * 2, fut).await {
        Ok(r) => Ok(r?),
        Err(_) => {
            let url = store_url(g).map(|u| u.to_string()).unwrap_or_default();
            Err(anyhow::anyhow!(
                "cannot reach store at {url}: no answer within {}s",
                (CONNECT_TIMEOUT * 2).as_secs()
            ))
        }
    }
}

/// A clap value parser for a duration flag (`30s`, `5m`, `1h30m`) that must lie within
/// `min..=max`: one for every duration flag, so that `0s` or `1000000years` is refused
/// before anything runs, and clap's error names the flag and the range.
pub fn duration_in(
    min: Duration,
    max: Duration,
) -> impl Fn(&str) -> Result<Duration, String> + Clone + Send + Sync + 'static {
    move |text: &str| {
        let range = format!(
            "{}..={}",
            humantime::format_duration(min),
            humantime::format_duration(max)
        );
        let d = humantime::parse_duration(text)
            .map_err(|e| format!("not a duration ({e}); use e.g. 30s, 5m, 1h within {range}"))?;
        if d < min || d > max {
            return Err(format!("out of range: must be within {range}"));
        }
        Ok(d)
    }
}

/// Resolves a kind word (`ro`, `rollouts`, `Rollout`).
pub fn parse_kind(word: &str) -> anyhow::Result<KindName> {
    KindName::parse(word).ok_or_else(|| CliError::UnknownKind(word.to_string()).into())
}

/// The namespace argument for a kind: `None` for cluster-scoped kinds.
pub fn ns_for(kind: KindName, g: &GlobalArgs) -> Option<&str> {
    kind.namespaced().then_some(g.namespace.as_str())
}

/// `rollout.deployctl.dev/api`, as kubectl prints a reference to an object.
pub fn reference(kind: KindName, name: &str) -> String {
    format!("{}.{}/{}", kind.singular(), crate::api::GROUP, name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_should_be_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_subcommand_should_show_examples_in_its_help() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            let name = format!("{path} {}", cmd.get_name());
            let has = cmd
                .get_after_help()
                .is_some_and(|h| h.to_string().contains("Examples:"));
            if !has && cmd.get_name() != "help" {
                missing.push(name.clone());
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &name, missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "", &mut missing);
        assert!(missing.is_empty(), "no Examples: in {missing:?}");
    }

    #[test]
    fn no_help_example_should_wrap_mid_command_at_80_columns() {
        fn walk(cmd: &mut clap::Command, path: &str, bad: &mut Vec<String>) {
            let name = format!("{path} {}", cmd.get_name()).trim().to_string();
            if let Some(after) = cmd.get_after_help().map(|h| h.to_string()) {
                // clap wraps at the width given; every line as written must fit, so
                // that what it prints is the text itself, line for line.
                for line in after.lines().filter(|l| l.chars().count() > 80) {
                    bad.push(format!("{name}: over 80 columns: {line:?}"));
                }
                let help = cmd.clone().term_width(80).render_help().to_string();
                let examples = help.split_once("Examples:").map_or("", |(_, e)| e);
                for line in examples.lines().filter(|l| !l.trim().is_empty()) {
                    if line.chars().count() > 80 || !after.lines().any(|a| a == line) {
                        bad.push(format!("{name}: {line:?}"));
                    }
                }
            }
            for sub in cmd.get_subcommands_mut() {
                walk(sub, &name, bad);
            }
        }
        let mut bad = Vec::new();
        let mut cli = Cli::command();
        cli.build();
        walk(&mut cli, "", &mut bad);
        assert!(
            bad.is_empty(),
            "example lines wrapped at 80 columns:\n{}",
            bad.join("\n")
        );
    }

    #[test]
    fn duration_in_should_accept_the_range_inclusive_and_refuse_the_rest() {
        let parse = duration_in(Duration::from_secs(2), Duration::from_secs(600));
        for (text, want) in [
            ("2s", Ok(2)),
            ("10m", Ok(600)),
            ("1m 30s", Ok(90)),
            ("2000ms", Ok(2)),
            ("1s", Err("out of range: must be within 2s..=10m")),
            ("1999ms", Err("out of range: must be within 2s..=10m")),
            ("0s", Err("out of range: must be within 2s..=10m")),
            ("601s", Err("out of range: must be within 2s..=10m")),
            ("1000000years", Err("out of range: must be within 2s..=10m")),
            (
                "18446744073709551615s",
                Err("out of range: must be within 2s..=10m"),
            ),
            ("99999999999999999999999s", Err("not a duration")),
            ("", Err("not a duration")),
            ("-5s", Err("not a duration")),
            ("ten", Err("not a duration")),
        ] {
            match (parse(text), want) {
                (Ok(d), Ok(secs)) => assert_eq!(d, Duration::from_secs(secs), "{text:?}"),
                (Err(e), Err(prefix)) => assert!(e.starts_with(prefix), "{text:?}: {e}"),
                (got, want) => panic!("{text:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn every_duration_flag_should_refuse_zero_and_absurd_values_naming_flag_and_range() {
        for (args, flag) in [
            (
                &["agent", "--name", "w", "--root", "/s", "--lease-ttl"][..],
                "--lease-ttl",
            ),
            (&["controller", "--lease-ttl"][..], "--lease-ttl"),
            (&["sync", "--repo", "r", "--interval"][..], "--interval"),
            (&["rollout", "status", "api", "--timeout"][..], "--timeout"),
            (&["up", "--demo-timeout"][..], "--demo-timeout"),
            (&["drain", "web-1", "--timeout"][..], "--timeout"),
            (&["delete", "ro", "api", "--timeout"][..], "--timeout"),
        ] {
            for bad in ["0s", "1000000years"] {
                let argv = std::iter::once("deployctl")
                    .chain(args.iter().copied())
                    .chain([bad]);
                let err = Cli::try_parse_from(argv).expect_err(bad).to_string();
                assert!(
                    err.contains(flag) && err.contains("must be within"),
                    "{args:?} {bad}: {err}"
                );
            }
        }
    }

    #[test]
    fn a_named_store_file_in_a_missing_directory_should_be_refused_unless_create_is_given() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let missing = dir.path().join("no/such/dir");
        let in_missing = missing.join("x.db").display().to_string();
        let in_existing = dir.path().join("x.db").display().to_string();
        let url = |args: &[&str]| {
            let argv = ["deployctl"].iter().chain(args).chain(&["get", "ro"]);
            store_url(&Cli::try_parse_from(argv).expect("valid flags").global)
        };
        let err = url(&["--store", &in_missing]).expect_err("a missing directory");
        assert_eq!(
            err.to_string(),
            format!(
                "directory {} of store file {in_missing} does not exist; pass --create to create it",
                missing.display()
            )
        );
        assert!(!missing.exists(), "refusing created the directory");
        let sqlite = format!("sqlite://{in_missing}");
        assert!(url(&["--store", &sqlite]).is_err(), "sqlite:// too");
        for ok in [
            &["--store", &in_missing, "--create"][..],
            &["--create", "--store", &sqlite][..],
            &["--store", &in_existing][..],
            &["--store", "x.db"][..],
            &["--store", "etcd://127.0.0.1:2379"][..],
        ] {
            assert!(url(ok).is_ok(), "{ok:?}: {:?}", url(ok));
        }
    }

    #[test]
    fn global_flags_should_parse_after_the_subcommand() {
        let cli = Cli::try_parse_from([
            "deployctl",
            "get",
            "ro",
            "-n",
            "prod",
            "--store",
            "/tmp/x.db",
            "-vv",
        ])
        .unwrap();
        assert_eq!(cli.global.namespace, "prod");
        assert_eq!(cli.global.store.as_deref(), Some("/tmp/x.db"));
        assert_eq!(cli.global.verbose, 2);
    }
}
