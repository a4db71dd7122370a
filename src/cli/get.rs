//! `deployctl get`: tables, `-o yaml|json|name`, and `-w` to follow changes.

use super::output::{self, Columns, Fleet};
use super::{connect, for_kind, parse_kind, within, CliError, GlobalArgs, OutputFormat};
use crate::api::selector::LabelSelector;
use crate::api::{KindName, Machine, Object};
use crate::store::{Client, ObjectEvent, Scope};
use chrono::Utc;
use clap::Args;
use futures::StreamExt;
use std::collections::{BTreeMap, HashMap};

pub const EXAMPLES: &str = "\
Examples:
  # Every rollout in the current namespace, then with more columns
  deployctl get rollouts
  deployctl get ro -o wide

  # One object as YAML (apply accepts it back)
  deployctl get rollout api -o yaml

  # Rollouts live: status symbol, step, gate and counts; one with its machines
  deployctl get rollouts -w
  deployctl get rollout api -w

  # Machines with a label, in every namespace, following changes
  deployctl get machines -l role=web -w

  # Instances of every namespace, names only
  deployctl get instances -A -o name";

#[derive(Args, Debug)]
pub struct GetArgs {
    /// machines (mc), applications (app), rollouts (ro), instances (inst), events (ev),
    /// notifiers (nt), tasks (tk).
    pub kind: String,
    /// Only these objects.
    pub names: Vec<String>,
    /// Label selector: `k=v`, `k!=v`, `k`, `!k`, `k in (a,b)`, `k notin (a,b)`, comma-joined.
    #[arg(short = 'l', long, value_name = "SELECTOR")]
    pub selector: Option<String>,
    /// List across every namespace.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
    /// Output format.
    #[arg(short = 'o', long, value_enum)]
    pub output: Option<OutputFormat>,
    /// After listing, print every change until interrupted.
    #[arg(short = 'w', long)]
    pub watch: bool,
    /// Print tables without the header line.
    #[arg(long)]
    pub no_headers: bool,
    /// No colour in the live rollout view (`NO_COLOR` works too).
    #[arg(long)]
    pub no_color: bool,
}

/// What `get` prints, decided once from the flags.
struct View {
    format: Option<OutputFormat>,
    all_namespaces: bool,
    no_headers: bool,
    selector: LabelSelector,
    names: Vec<String>,
    /// The Machines, read once when the rows say whether their machine counts (the
    /// Instances' NOTE); empty otherwise. `-w` does not follow them.
    machines: BTreeMap<String, Machine>,
}

impl View {
    /// What rows are drawn against now.
    fn fleet(&self) -> Fleet {
        Fleet {
            now: Utc::now(),
            machines: self.machines.clone(),
        }
    }

    fn wide(&self) -> bool {
        self.format == Some(OutputFormat::Wide)
    }

    fn wants<K: Object>(&self, obj: &K) -> bool {
        (self.names.is_empty() || self.names.iter().any(|n| n == obj.name()))
            && self.selector.matches(&obj.meta().labels)
    }
}

pub async fn run(g: &GlobalArgs, args: GetArgs) -> anyhow::Result<i32> {
    let kind = parse_kind(&args.kind)?;
    let selector = match &args.selector {
        Some(s) => LabelSelector::parse(s).map_err(anyhow::Error::msg)?,
        None => LabelSelector::default(),
    };
    let mut view = View {
        format: args.output,
        all_namespaces: args.all_namespaces && kind.namespaced(),
        no_headers: args.no_headers,
        selector,
        names: args.names.clone(),
        machines: BTreeMap::new(),
    };
    let scope = if args.all_namespaces {
        Scope::All
    } else {
        Scope::Namespace(g.namespace.clone())
    };
    let client = connect(g).await?;
    // Rollouts followed without `-o` get the live view (symbols, gates, machine tree).
    if args.watch && kind == KindName::Rollout && args.output.is_none() {
        let opts = super::view::WatchOptions {
            scope,
            names: args.names,
            selector: view.selector,
            all_namespaces: view.all_namespaces,
            no_color: args.no_color,
        };
        return super::view::watch(&client, opts).await;
    }
    let table = matches!(view.format, None | Some(OutputFormat::Wide));
    if kind == KindName::Instance && table {
        let listed = within(g, client.list::<Machine>(&Scope::All)).await?;
        view.machines = listed
            .items
            .into_iter()
            .map(|m| (m.name().to_string(), m))
            .collect();
    }
    for_kind!(kind, K => {
        if args.watch {
            watch::<K>(&client, scope, &view).await
        } else {
            list::<K>(g, &client, scope, &view).await
        }
    })
}

fn scope_words(kind: KindName, scope: &Scope) -> String {
    match scope {
        Scope::Namespace(ns) if kind.namespaced() => format!(" in {ns} namespace"),
        _ => String::new(),
    }
}

async fn list<K: Columns>(
    g: &GlobalArgs,
    client: &Client,
    scope: Scope,
    view: &View,
) -> anyhow::Result<i32> {
    let listed = within(g, client.list::<K>(&scope)).await?;
    let mut items: Vec<K> = listed.items.into_iter().filter(|o| view.wants(o)).collect();
    items.sort_by_key(|o| o.sort_key());
    let mut missing = Vec::new();
    if !view.names.is_empty() {
        // Keep the order the names were given in, as kubectl does.
        let mut ordered = Vec::new();
        for n in &view.names {
            match items.iter().find(|o| o.name() == n) {
                Some(o) => ordered.push(o.clone()),
                None => missing.push(n.clone()),
            }
        }
        items = ordered;
    }
    print_items(&items, view, view.names.len() == 1)?;
    if items.is_empty()
        && view.names.is_empty()
        && !matches!(view.format, Some(OutputFormat::Yaml | OutputFormat::Json))
    {
        eprintln!("No resources found{}.", scope_words(K::KIND_NAME, &scope));
    }
    if missing.is_empty() {
        return Ok(0);
    }
    let last = missing.len() - 1;
    for (i, name) in missing.into_iter().enumerate() {
        let e = CliError::NotFound {
            plural: K::PLURAL,
            name,
        };
        if i < last {
            eprintln!("{}", output::escape(&e.to_string()));
        } else {
            return Err(e.into());
        }
    }
    Ok(1)
}

/// Prints objects in the chosen format; `single` prints one object rather than a List.
fn print_items<K: Columns>(items: &[K], view: &View, single: bool) -> anyhow::Result<()> {
    match view.format {
        Some(OutputFormat::Yaml) => {
            if single {
                if let Some(o) = items.first() {
                    outln!("{}", output::to_yaml(o)?);
                }
            } else {
                outln!("{}", output::to_yaml(&output::list_value(items)?)?);
            }
        }
        Some(OutputFormat::Json) => {
            if single {
                if let Some(o) = items.first() {
                    outln!("{}", serde_json::to_string_pretty(o)?);
                }
            } else {
                outln!(
                    "{}",
                    serde_json::to_string_pretty(&output::list_value(items)?)?
                );
            }
        }
        Some(OutputFormat::Name) => {
            for o in items {
                outln!(
                    "{}",
                    output::escape(&super::reference(K::KIND_NAME, o.name()))
                );
            }
        }
        None | Some(OutputFormat::Wide) => {
            if items.is_empty() {
                return Ok(());
            }
            let rows = output::table_rows(items, view.wide(), view.all_namespaces, &view.fleet());
            let headers = output::table_headers::<K>(view.wide(), view.all_namespaces);
            let headers = (!view.no_headers).then_some(headers.as_slice());
            outln!("{}", output::render(headers, &rows));
        }
    }
    Ok(())
}

/// Prints one changed object during `-w`: a table row without header, or the object.
fn print_change<K: Columns>(obj: &K, view: &View, widths_from: &[String]) -> anyhow::Result<()> {
    match view.format {
        Some(OutputFormat::Yaml) => outln!("---\n{}", output::to_yaml(obj)?),
        Some(OutputFormat::Json) => outln!("{}", serde_json::to_string_pretty(obj)?),
        Some(OutputFormat::Name) => outln!(
            "{}",
            output::escape(&super::reference(K::KIND_NAME, obj.name()))
        ),
        None | Some(OutputFormat::Wide) => {
            let row = output::table_rows(
                std::slice::from_ref(obj),
                view.wide(),
                view.all_namespaces,
                &view.fleet(),
            );
            // Pad to the header's widths so that rows line up under it where they fit.
            let padded: Vec<String> = row[0]
                .iter()
                .enumerate()
                .map(|(i, cell)| match widths_from.get(i) {
                    Some(h) if i + 1 < row[0].len() => format!("{cell:<w$}", w = h.len()),
                    _ => cell.clone(),
                })
                .collect();
            outln!("{}", output::render(None, &[padded]));
        }
    }
    Ok(())
}

/// What a watcher remembers of an object to tell a real change after a relist.
fn version_of<K: Object>(o: &K) -> (String, i64) {
    (
        o.meta().resource_version.clone().unwrap_or_default(),
        o.meta().status_version,
    )
}

async fn watch<K: Columns>(client: &Client, scope: Scope, view: &View) -> anyhow::Result<i32> {
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    let mut stream = client.list_watch::<K>(scope.clone());
    // The last state printed of every object shown, to print only real changes after
    // a relist and to print the rows of objects deleted meanwhile.
    let mut seen: HashMap<String, K> = HashMap::new();
    let mut first = true;
    // Column widths of the first table, so later rows line up with it.
    let mut widths: Vec<String> = Vec::new();
    loop {
        let next = tokio::select! {
            n = stream.next() => n,
            _ = &mut shutdown => return Ok(0),
        };
        let Some(event) = next else { return Ok(0) };
        let event = match event {
            Ok(e) => e,
            Err(e) if first => return Err(e.into()),
            Err(e) => {
                // The store's watch resumes by itself; say so and keep going.
                tracing::warn!(error = %e, "watch interrupted; resuming");
                continue;
            }
        };
        match event {
            ObjectEvent::Restarted(items) => {
                let mut items: Vec<K> = items.into_iter().filter(|o| view.wants(o)).collect();
                items.sort_by_key(|o| o.sort_key());
                if first {
                    first = false;
                    if items.is_empty() && view.format.is_none() {
                        eprintln!("No resources found{}.", scope_words(K::KIND_NAME, &scope));
                    }
                    print_items(&items, view, false)?;
                    widths = column_widths(&items, view);
                } else {
                    for o in &items {
                        let changed = seen
                            .get(&o.meta().key())
                            .is_none_or(|old| version_of(old) != version_of(o));
                        if changed {
                            print_change(o, view, &widths)?;
                        }
                    }
                    let mut gone: Vec<&K> = seen
                        .values()
                        .filter(|old| !items.iter().any(|o| o.meta().key() == old.meta().key()))
                        .collect();
                    gone.sort_by_key(|o| o.sort_key());
                    for old in gone {
                        print_change(old, view, &widths)?;
                    }
                }
                seen = items.into_iter().map(|o| (o.meta().key(), o)).collect();
            }
            ObjectEvent::Applied(o) => {
                if view.wants(&o) {
                    print_change(&o, view, &widths)?;
                    seen.insert(o.meta().key(), o);
                } else if seen.remove(&o.meta().key()).is_some() {
                    // Its labels left the selection: for this watch it is gone.
                    print_change(&o, view, &widths)?;
                }
            }
            ObjectEvent::Deleted(o) => {
                if seen.remove(&o.meta().key()).is_some() || view.wants(&o) {
                    print_change(&o, view, &widths)?;
                }
            }
        }
    }
}

/// Cells padded to each column's width in the first table (header included).
fn column_widths<K: Columns>(items: &[K], view: &View) -> Vec<String> {
    let headers = output::table_headers::<K>(view.wide(), view.all_namespaces);
    let rows = output::table_rows(items, view.wide(), view.all_namespaces, &view.fleet());
    headers
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let w = rows
                .iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .chain(std::iter::once(if view.no_headers { 0 } else { h.len() }))
                .max()
                .unwrap_or(0);
            " ".repeat(w)
        })
        .collect()
}

/// Resolves on SIGINT or SIGTERM. The handlers are installed when this is called, not
/// when first polled, so a signal that comes while the caller is busy is not lost: call
/// it once, before the work, and keep the future.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    async move {
        match (term, int) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            // No signal driver (cannot happen on unix with tokio's `signal` feature):
            // never resolve rather than exit at once.
            _ => futures::future::pending::<()>().await,
        }
    }
}
